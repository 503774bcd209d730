"""One rollout: prompts -> sampled responses -> scores, as a :class:`sapo.batch.Batch`.

Used by the training step and by validation. The engine returns ``n`` responses per prompt in
consecutive rows; each response is decoded (special tokens dropped) and scored by the reward manager
with its prompt's ``data_source``, ``ground_truth`` and ``extra_info``; the score is placed on the last
response token (verl's ``token_level_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sapo.batch import Batch
from sapo.distributed.gather import gather_batch, gather_rewards
from sapo.distributed.world import World
from sapo.rewards.managers import RewardResult, RewardSample
from sapo.rewards.token_level import token_level_scores
from sapo.rollout.base import SamplingParams
from sapo.trainer.forward_pass import forward_rows


@dataclass
class ScoredRollout:
    batch: Batch
    items: list[dict]  # the dataset item of each row (shared by the n responses of a prompt)
    responses: list[str]  # decoded response text of each row
    reward: RewardResult


def generate_and_score(
    engine,
    tokenizer,
    reward_manager,
    items: list[dict],
    sampling: SamplingParams,
    *,
    seeds: list[int] | None = None,
    world: World | None = None,
) -> ScoredRollout:
    """Sample ``sampling.n`` responses for each dataset item and score them. ``seeds``: one per item
    (`sapo.rollout.seeds`). In a world of several processes each rank generates and scores its share of
    the items and every rank returns the whole batch (`sapo.distributed.gather`)."""
    world = world or World()
    share = world.share(len(items))
    local_seeds = None if seeds is None else [seeds[i] for i in share]
    batch, responses, reward, pad_token_id = _generate_and_score(
        engine, tokenizer, reward_manager, [items[i] for i in share], sampling, local_seeds
    )
    batch = gather_batch(world, batch, pad_token_id, first_prompt=share.start)
    responses = world.gather_lists(responses)
    reward = gather_rewards(world, reward)
    row_items = [items[int(i)] for i in batch.group_index]
    return ScoredRollout(batch=batch, items=row_items, responses=responses, reward=reward)


def _generate_and_score(engine, tokenizer, reward_manager, items, sampling, seeds):
    if not items:  # a rank whose share of a small validation batch is empty
        return _empty_batch(), [], RewardResult(scores=[]), 0
    rollout = engine.generate([item["prompt_ids"] for item in items], sampling, seeds=seeds)
    row_items = [items[int(i)] for i in rollout.prompt_index]
    lengths = rollout.response_lengths.tolist()  # [N]
    responses = tokenizer.batch_decode(
        [ids[:length] for ids, length in zip(rollout.response_ids.tolist(), lengths)],
        skip_special_tokens=True,
    )
    samples = [
        RewardSample(
            data_source=item["data_source"],
            response=text,
            ground_truth=item["ground_truth"],
            extra_info=item.get("extra_info"),
            response_length=length,
            uid=item["index"],
        )
        for item, text, length in zip(row_items, responses, lengths)
    ]
    reward = reward_manager(samples)
    input_ids, attention_mask = rollout.input_ids()  # [N, P + R]
    response_mask = rollout.response_mask.float()  # [N, R]
    batch = Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        group_index=rollout.prompt_index.clone(),
        truncated=rollout.truncated,
        rollout_log_probs=rollout.rollout_log_probs,
        token_level_scores=token_level_scores(reward.scores, response_mask),
    )
    return batch, responses, reward, rollout.pad_token_id


def compute_log_probs(
    model,
    batch: Batch,
    micro_batch_size: int,
    temperature: float,
    max_tokens: int | None = None,
    world: World | None = None,
) -> torch.Tensor:
    """Log-probs of the batch's response tokens under ``model`` (no gradient), micro-batch by
    micro-batch (``micro_batch_size`` rows, or groups of at most ``max_tokens`` real tokens), each rank
    its share of the rows: ``old_log_prob`` for the actor, ``ref_log_prob`` for the reference policy."""
    from sapo.models.logprobs import token_log_probs

    def forward(micro: Batch) -> torch.Tensor:
        log_prob, _ = token_log_probs(
            model, micro.input_ids, micro.attention_mask, micro.response_length, temperature=temperature
        )
        return log_prob  # [n, r]

    return forward_rows(model, batch, micro_batch_size, max_tokens, forward, world)  # [N, R]


def _empty_batch() -> Batch:
    rows = torch.zeros((0, 0))
    return Batch(
        input_ids=rows.long(),
        attention_mask=rows.long(),
        response_mask=rows,
        group_index=torch.zeros(0, dtype=torch.long),
        truncated=torch.zeros(0, dtype=torch.bool),
        rollout_log_probs=rows,
        token_level_scores=rows,
    )
