"""verl's per-step data metrics of a rollout batch: scores, rewards, advantages, returns, lengths, timing
and throughput (names as in verl's ``compute_data_metrics`` / ``compute_timing_metrics``)."""

from __future__ import annotations

import torch

from sapo.batch import Batch


def _stats(prefix: str, values: torch.Tensor) -> dict[str, float]:
    values = values.float()
    if values.numel() == 0:
        return {}
    return {
        f"{prefix}/mean": float(values.mean()),
        f"{prefix}/max": float(values.max()),
        f"{prefix}/min": float(values.min()),
    }


def batch_metrics(batch: Batch, timing: dict[str, float]) -> dict[str, float]:
    mask = batch.response_mask.bool()  # [N, R]
    response_length = batch.response_mask.sum(-1)  # [N]
    prompt_length = batch.attention_mask[:, : batch.input_ids.shape[1] - batch.response_length].sum(-1)  # [N]
    metrics: dict[str, float] = {}
    metrics.update(_stats("critic/score", batch.token_level_scores.sum(-1)))
    metrics.update(_stats("critic/rewards", batch.token_level_rewards.sum(-1)))
    if batch.advantages is not None:  # None: a non-finite input skipped them (sapo.trainer.nonfinite)
        metrics.update(_stats("critic/advantages", batch.advantages[mask]))
        metrics.update(_stats("critic/returns", batch.returns[mask]))
    if batch.values is not None:
        metrics.update(_stats("critic/values", batch.values[mask]))
    metrics.update(_stats("response_length", response_length))
    metrics["response_length/clip_ratio"] = float(batch.truncated.float().mean())
    metrics.update(_stats("prompt_length", prompt_length))
    total_tokens = float(response_length.sum() + prompt_length.sum())
    metrics["perf/total_num_tokens"] = total_tokens
    metrics["perf/throughput"] = total_tokens / max(timing["step"], 1e-9)
    metrics["perf/gen_tokens_per_s"] = float(response_length.sum()) / max(timing["gen"], 1e-9)
    metrics.update({f"timing_s/{name}": value for name, value in timing.items()})
    return metrics
