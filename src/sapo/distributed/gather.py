"""Putting a step's rollout back together: every rank generated its share of the prompts; after these
gathers every rank holds the whole batch, laid out exactly as one process would have generated it.

Why gather rather than keep each share local and reduce statistics: the batch is token ids and a few
per-token floats (no activations), and with the whole batch on every rank each statistic over it (group
baselines, REINFORCE++ / GAE whitening, reward and length metrics, the KL controller, the shuffle into
mini-batches) is computed by the single-process code on the single-process numbers, so none can be
forgotten or reduced with the wrong weights. What stays split is the expensive part: generation and every
forward/backward pass (each rank takes its share of every mini-batch).
"""

from __future__ import annotations

from dataclasses import fields

from sapo.batch import Batch
from sapo.distributed.world import World
from sapo.rewards.managers import RewardResult


def gather_batch(world: World, local: Batch, pad_token_id: int, first_prompt: int) -> Batch:
    """The whole batch from every rank's ``local`` share; ``first_prompt`` is the global index of this
    rank's first prompt (its ``group_index`` values are local)."""
    local.group_index = local.group_index + first_prompt
    if world.size == 1:
        return local
    prompt_width = world.max(local.input_ids.shape[1] - local.response_length)
    response_width = world.max(local.response_length)
    padded = local.padded(prompt_width, response_width, pad_token_id)
    counts = world.gather_objects(local.num_sequences)  # once for every field
    gathered = {}
    for f in fields(Batch):
        value = getattr(padded, f.name)
        gathered[f.name] = None if value is None else world.gather_rows(value, counts)
    return Batch(**gathered)


def gather_rewards(world: World, local: RewardResult) -> RewardResult:
    """One RewardResult for the whole batch, samples in rank order."""
    if world.size == 1:
        return local
    return RewardResult.concat(world.gather_objects(local))
