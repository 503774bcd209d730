"""Validation: sample ``val_kwargs.n`` responses per validation prompt and report, per data source, the
mean reward, the mean accuracy (``mean@k``) and the unbiased ``pass@k`` (Chen et al., arXiv 2107.03374).

A response's accuracy is the ``acc`` its scoring function reported (a dict result with an ``acc`` key),
or else its score: the built-in scorers, gsm8k and math give 1.0 for a right answer and 0.0 otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from sapo.rollout.base import SamplingParams
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
    generations_path: Path | None = None,
    step: int = 0,
) -> dict[str, float]:
    """Generate for every validation prompt and return the ``val-core/...`` and ``val-aux/...`` metrics."""
    items = [dataset[i] for i in range(len(dataset))]
    size = batch_size or len(items)
    sources, prompt_ids, rewards, correct, records = [], [], [], [], []
    for start in range(0, len(items), size):
        scored = generate_and_score(engine, tokenizer, reward_manager, items[start : start + size], sampling)
        accs = scored.reward.extra_info.get("acc") or [None] * len(scored.responses)
        for item, text, score, acc in zip(scored.items, scored.responses, scored.reward.scores, accs):
            sources.append(item["data_source"])
            prompt_ids.append(item["index"])
            rewards.append(float(score))
            correct.append(float(score if acc is None else acc))
            records.append({"step": step, "prompt": item["prompt_text"], "response": text, "score": score})
    if generations_path is not None:
        generations_path.parent.mkdir(parents=True, exist_ok=True)
        with generations_path.open("a") as out:
            out.writelines(json.dumps(r) + "\n" for r in records)
    return validation_metrics(sources, prompt_ids, rewards, correct)


def accuracy_of(metrics: dict[str, float]) -> float | None:
    """The mean of the ``val-core/<source>/acc/mean@k`` values (one number to print and compare)."""
    values = [v for k, v in metrics.items() if k.startswith("val-core/") and "/acc/mean@" in k]
    return sum(values) / len(values) if values else None
