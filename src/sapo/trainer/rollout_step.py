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
from sapo.rewards.managers import RewardResult, RewardSample
from sapo.rewards.token_level import token_level_scores
from sapo.rollout.base import RolloutBatch, SamplingParams


@dataclass
class ScoredRollout:
    batch: Batch
    rollout: RolloutBatch
    items: list[dict]  # the dataset item of each row (shared by the n responses of a prompt)
    responses: list[str]  # decoded response text of each row
    reward: RewardResult


def generate_and_score(engine, tokenizer, reward_manager, items: list[dict], sampling: SamplingParams):
    """Sample ``sampling.n`` responses for each dataset item and score them."""
    rollout = engine.generate([item["prompt_ids"] for item in items], sampling)
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
    return ScoredRollout(batch=batch, rollout=rollout, items=row_items, responses=responses, reward=reward)


@torch.no_grad()
def compute_log_probs(
    model, batch: Batch, micro_batch_size: int, temperature: float, max_tokens: int | None = None
) -> torch.Tensor:
    """Log-probs of the batch's response tokens under ``model`` (no gradient), micro-batch by
    micro-batch (``micro_batch_size`` rows, or groups of at most ``max_tokens`` real tokens):
    ``old_log_prob`` for the actor, ``ref_log_prob`` for the reference policy."""
    from sapo.models.logprobs import token_log_probs

    was_training = model.training
    model.eval()
    out = None
    for rows, micro in batch.micro_batches(micro_batch_size, max_tokens):
        trimmed = micro.trimmed()
        log_prob, _ = token_log_probs(
            model, trimmed.input_ids, trimmed.attention_mask, trimmed.response_length, temperature=temperature
        )  # [n, r]
        if out is None:
            out = log_prob.new_zeros(batch.num_sequences, batch.response_length)  # [N, R]
        out[rows, : log_prob.shape[1]] = log_prob
    model.train(was_training)
    return out  # [N, R]
