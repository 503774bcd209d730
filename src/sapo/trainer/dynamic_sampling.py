"""DAPO dynamic sampling (Yu et al., arXiv 2503.14476, section 3.2; verl's ``algorithm.filter_groups``).

A prompt group whose responses all get the same reward has zero advantage under group baselines (GRPO,
RLOO, ...): it costs a whole update and teaches nothing. With ``filter_groups.enable`` a step:

1. generates and scores ``data.train_batch_size`` prompts, as without filtering;
2. keeps the groups whose ``metric`` (`group_values`) has a non-zero standard deviation over their
   ``rollout.n`` responses (a group of one is kept: it has no baseline, as in verl);
3. while fewer than ``train_batch_size`` groups are kept, draws the next prompts from the sampler and
   generates again, up to ``max_num_gen_batches`` rounds (0: no cap);
4. trains on the first ``train_batch_size`` kept groups. At the cap with fewer, it trains on the largest
   whole number of mini-batches of them (so every mini-batch and rank split stays as configured), warns,
   and counts the step in ``dynamic_sampling/short_steps``; with not even one mini-batch of informative
   groups it trains on the last round as generated (its zero-variance groups carry no policy gradient).

Each round's sampling seeds come from the step and the prompt's place among all the step's rounds, so a
refill never repeats an earlier round's draws. The sampler moves on by every round's prompts, and its
position is saved in checkpoints: a resumed run refills from where the interrupted one was. With several
processes every rank holds each round's whole batch (`sapo.trainer.rollout_step`), so all keep the same
groups and the refill is global.

Metrics: ``dynamic_sampling/kept_groups`` (informative groups found), ``generated_batches`` (rounds),
``dropped_fraction`` (of all generated groups), ``short_steps`` (1 when the cap stopped the refill short).
"""

from __future__ import annotations

import sys
from dataclasses import fields

import torch

from sapo.batch import Batch
from sapo.errors import ConfigError
from sapo.rewards.managers import RewardResult
from sapo.trainer.rollout_step import ScoredRollout

SCORE_METRICS = ("score", "seq_reward", "seq_final_reward")


def group_values(scored: ScoredRollout, metric: str | None) -> torch.Tensor:
    """``[N]`` per-response values of ``metric``: the score (``score``, ``seq_reward``,
    ``seq_final_reward``: before any KL term, which is computed after filtering), the reward's ``acc``
    (null: ``acc``, which is the score when the reward function returns plain numbers), or any key a
    reward function returns in its dict."""
    metric = metric or "acc"
    scores = torch.tensor(scored.reward.scores, dtype=torch.float64)  # [N]
    if metric in SCORE_METRICS or (metric == "acc" and "acc" not in scored.reward.extra_info):
        return scores
    values = scored.reward.extra_info.get(metric)
    if values is None or any(v is None for v in values):
        known = ", ".join([*SCORE_METRICS, "acc", *sorted(scored.reward.extra_info)])
        raise ConfigError(
            f"algorithm.filter_groups.metric={metric!r} is not a value every response has (available: "
            f"{known}): choose one of those, or return it from the reward function's dict"
        )
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def informative_groups(values: torch.Tensor, group_index: torch.Tensor) -> list[int]:
    """The group ids, in order of first appearance, whose values differ (or that have one response)."""
    kept = []
    for group in dict.fromkeys(group_index.tolist()):
        member = values[group_index == group]  # [n]
        if len(member) == 1 or bool((member != member[0]).any()):
            kept.append(group)
    return kept


def select_groups(scored: ScoredRollout, groups: list[int]) -> ScoredRollout:
    """The rollout of ``groups`` only, renumbered 0..len(groups)-1 in that order."""
    renumber = {group: i for i, group in enumerate(groups)}
    index = scored.batch.group_index.tolist()
    rows_of: dict[int, list[int]] = {}
    for row, group in enumerate(index):
        rows_of.setdefault(group, []).append(row)
    rows = [row for group in groups for row in rows_of[group]]
    batch = scored.batch.select(rows)
    batch.group_index = torch.tensor([renumber[index[row]] for row in rows], dtype=torch.long)
    return ScoredRollout(
        batch=batch,
        items=[scored.items[row] for row in rows],
        responses=[scored.responses[row] for row in rows],
        reward=scored.reward.select(rows),
    )


def concat_rollouts(parts: list[ScoredRollout], pad_token_id: int) -> ScoredRollout:
    """One rollout of ``parts`` in order: batches padded to common widths, groups renumbered."""
    prompt = max(p.batch.input_ids.shape[1] - p.batch.response_length for p in parts)
    response = max(p.batch.response_length for p in parts)
    batches, offset = [], 0
    for part in parts:
        batch = part.batch.padded(prompt, response, pad_token_id)
        batch.group_index = batch.group_index + offset
        offset += len(set(part.batch.group_index.tolist()))
        batches.append(batch)
    merged = {}
    for f in fields(Batch):
        values = [getattr(b, f.name) for b in batches]
        merged[f.name] = None if any(v is None for v in values) else torch.cat(values)
    return ScoredRollout(
        batch=Batch(**merged),
        items=[item for p in parts for item in p.items],
        responses=[text for p in parts for text in p.responses],
        reward=RewardResult.concat([p.reward for p in parts]),
    )


def collect(
    generate, train_batch_size: int, mini_batch_prompts: int, filter_groups, pad_token_id: int, warn=True
):
    """Steps 1-4 of the module docstring. ``generate(round)`` returns round ``round``'s ScoredRollout
    (it draws that round's prompts from the sampler). Returns the rollout to train on and the metrics;
    ``warn``: print the short-step warning (rank 0)."""
    kept: list[ScoredRollout] = []
    found = generated_groups = rounds = 0
    cap = filter_groups.max_num_gen_batches
    while True:
        scored = generate(rounds)
        rounds += 1
        values = group_values(scored, filter_groups.metric)
        groups = informative_groups(values, scored.batch.group_index)
        generated_groups += len(set(scored.batch.group_index.tolist()))
        found += len(groups)
        if groups:
            kept.append(select_groups(scored, groups))
        if found >= train_batch_size or (cap > 0 and rounds >= cap):
            break
    usable = (
        train_batch_size if found >= train_batch_size else found // mini_batch_prompts * mini_batch_prompts
    )
    metrics = {
        "dynamic_sampling/kept_groups": float(found),
        "dynamic_sampling/generated_batches": float(rounds),
        "dynamic_sampling/dropped_fraction": 1.0 - found / max(generated_groups, 1),
        "dynamic_sampling/short_steps": 0.0 if found >= train_batch_size else 1.0,
    }
    if found < train_batch_size and warn:
        print(
            f"sapo train: warning: dynamic sampling found {found} informative groups in {rounds} rounds "
            f"(algorithm.filter_groups.max_num_gen_batches={cap}), fewer than data.train_batch_size="
            f"{train_batch_size}: "
            + (
                f"training on {usable}"
                if usable
                else "not even one mini-batch, training on the last round as generated"
            ),
            file=sys.stderr,
            flush=True,
        )
    if not usable:
        return scored, metrics
    merged = concat_rollouts(kept, pad_token_id)
    return select_groups(merged, list(range(usable))), metrics
