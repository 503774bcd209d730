"""Validation: sample ``val_kwargs.n`` responses per validation prompt and report, per data source, the
mean reward, the mean accuracy (``mean@k``) and the unbiased ``pass@k`` (Chen et al., arXiv 2107.03374).

A response's accuracy is the ``acc`` its scoring function reported (a dict result with an ``acc`` key),
or else its score: the built-in scorers, gsm8k and math give 1.0 for a right answer and 0.0 otherwise.
"""

from __future__ import annotations

import random

from sapo.distributed.world import World
from sapo.rollout.base import SamplingParams
from sapo.rollout.seeds import VALIDATION_STREAM, rollout_seeds
from sapo.trainer.generations import generation_records
from sapo.trainer.rollout_step import generate_and_score
from sapo.trainer.validation_metrics import validation_metrics


def run_validation(
    engine,
    tokenizer,
    reward_manager,
    dataset,
    sampling: SamplingParams,
    *,
    batch_size: int | None = None,
    step: int = 0,
    records: list[dict] | None = None,
    shuffle_seed: int | None = None,
    seed: int = 0,
    world: World | None = None,
) -> dict[str, float]:
    """Generate for every validation prompt and return the ``val-core/...`` and ``val-aux/...`` metrics.

    ``records``: a list that receives one record per response (:mod:`sapo.trainer.generations`).
    ``shuffle_seed``: visit the prompts in a seeded random order (``data.validation_shuffle``) instead of
    dataset order; it changes the generation batches and the order of the records, not the metrics'
    definition. ``seed``: the base of the per-prompt sampling seeds (`sapo.rollout.seeds`, validation
    stream), one per place in the visiting order and the same at every validation, so successive
    validations differ only by the policy. ``world``: the processes split each batch (see
    `generate_and_score`); every rank returns the same metrics and records."""
    order = list(range(len(dataset)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    items = [dataset[i] for i in order]
    size = batch_size or len(items)
    sources, prompt_ids, rewards, correct = [], [], [], []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        seeds = rollout_seeds(seed, VALIDATION_STREAM, 0, range(start, start + len(chunk)))
        scored = generate_and_score(
            engine, tokenizer, reward_manager, chunk, sampling, seeds=seeds, world=world
        )
        accs = scored.reward.extra_info.get("acc") or [None] * len(scored.responses)
        for item, score, acc in zip(scored.items, scored.reward.scores, accs):
            sources.append(item["data_source"])
            prompt_ids.append(item["index"])
            rewards.append(float(score))
            correct.append(float(score if acc is None else acc))
        if records is not None:
            records.extend(generation_records(scored, step))
    return validation_metrics(sources, prompt_ids, rewards, correct)


def accuracy_of(metrics: dict[str, float]) -> float | None:
    """The mean of the ``val-core/<source>/acc/mean@k`` values (one number to print and compare)."""
    values = [v for k, v in metrics.items() if k.startswith("val-core/") and "/acc/mean@" in k]
    return sum(values) / len(values) if values else None
