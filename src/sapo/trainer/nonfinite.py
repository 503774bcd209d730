"""The non-finite guard: a NaN or Inf is caught where it arises, the update it would poison is skipped, and
a run that keeps producing them stops with a checkpoint.

Two places, each checked every step:

1. **The batch**, before any update: the token rewards (scores, minus the KL penalty with
   ``algorithm.use_kl_in_reward``), the advantages and returns, the critic's values and the log-probs the
   update reads (``old_log_prob``, ``ref_log_prob``, and ``rollout_log_probs`` when rollout correction or
   bypass uses them), on valid tokens only (padding may hold anything). Every rank holds the whole batch,
   so every rank decides the same. Any non-finite entry skips the step's actor and critic updates: no
   forward, no backward, parameters, optimizer state and the KL controller untouched. The learning-rate
   schedules still advance, so the rate stays a function of the step.
2. **The loss and the gradients**, in each optimizer step (`sapo.trainer.ppo_update`): a step whose
   gradient norm is not finite (a NaN / Inf loss makes it NaN too) is not taken (verl's rule); it is
   counted in ``actor/skipped_steps`` / ``critic/skipped_steps`` and its non-finite micro-batch losses in
   ``actor/nonfinite_losses`` / ``critic/nonfinite_losses``.

A step with either counts towards ``training/nonfinite_streak`` (steps in a row; a clean step resets it,
and it is saved in checkpoints). Each such step prints a warning naming the step and the sources; when
the streak reaches ``trainer.max_nonfinite_steps`` the run saves a checkpoint (of the last good weights:
the skipped steps changed nothing) and stops with `NonFiniteError`.
"""

from __future__ import annotations

import sys

import torch

from sapo.batch import Batch
from sapo.errors import UserError


class NonFiniteError(UserError):
    """Too many steps in a row had non-finite values; the run saved a checkpoint and stopped."""


def nonfinite_sources(batch: Batch, reads_rollout_log_probs: bool) -> dict[str, int]:
    """``{source: number of non-finite valid entries}`` for each per-token tensor of ``batch`` that the
    update reads and that has any (empty when the batch is clean)."""
    valid = batch.response_mask.bool()  # [N, R]
    tensors = {
        "rewards": batch.token_level_rewards,
        "advantages": batch.advantages,
        "returns": batch.returns,
        "values": batch.values,
        "old_log_prob": batch.old_log_prob,
        "ref_log_prob": batch.ref_log_prob,
        "rollout_log_probs": batch.rollout_log_probs if reads_rollout_log_probs else None,
    }
    out = {}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        count = int((~torch.isfinite(tensor) & valid).sum())  # [N, R] -> number
        if count:
            out[name] = count
    return out


def update_sources(metrics: dict[str, float]) -> dict[str, float]:
    """The optimizer steps the update itself skipped (non-finite gradient norm), by model: the sources of
    check 2 of the module docstring, from the update's metrics."""
    return {
        prefix: metrics[f"{prefix}/skipped_steps"]
        for prefix in ("actor", "critic")
        if metrics.get(f"{prefix}/skipped_steps", 0.0) > 0
    }


def describe(batch_sources: dict[str, int], skipped: dict[str, float], valid_tokens: int) -> str:
    parts = [f"{name} ({count} of {valid_tokens} valid tokens)" for name, count in batch_sources.items()]
    parts += [
        f"{prefix} loss or gradients ({fraction:.0%} of its optimizer steps skipped)"
        for prefix, fraction in skipped.items()
    ]
    return ", ".join(parts)


def warn(step: int, sources: str, skipped_batch: bool, streak: int, limit: int | None) -> None:
    what = (
        "the step's actor and critic updates were skipped"
        if skipped_batch
        else "those optimizer steps were not taken"
    )
    stop = f"the run stops at trainer.max_nonfinite_steps={limit}" if limit else "no limit is set"
    print(
        f"sapo train: warning: step {step}: non-finite values in {sources}; {what} (parameters and "
        f"optimizer state unchanged by them). {streak} such step(s) in a row; {stop}.",
        file=sys.stderr,
        flush=True,
    )


def stop_error(step: int, limit: int, sources: str, checkpoint) -> NonFiniteError:
    return NonFiniteError(
        f"stopping at step {step}: {limit} steps in a row had non-finite values (last: {sources}); "
        f"trainer.max_nonfinite_steps={limit}. Nothing was learned from them; the checkpoint {checkpoint} "
        "holds the last good weights. Usual causes: a learning rate too high "
        "(actor_rollout_ref.actor.optim.lr), float16 overflow (use bfloat16 or float32), a KL term between "
        "policies that no longer overlap (-inf log-probs), or a critic that diverged. Fix the cause and "
        "resume (trainer.resume_mode=auto), or raise trainer.max_nonfinite_steps (null: never stop)."
    )


class NonFiniteStreak:
    """Steps in a row with non-finite values (saved in checkpoints), and what the last one had."""

    def __init__(self, limit: int | None):
        self.limit, self.count, self.last = limit, 0, ""

    def record(self, batch: Batch, batch_sources: dict[str, int], update_metrics: dict) -> dict:
        """Count a step from its batch check and its update's metrics; the step's guard metrics."""
        skipped = update_sources(update_metrics)
        metrics = {"training/skipped_update": 1.0 if batch_sources else 0.0}
        metrics.update({f"training/nonfinite/{name}": float(n) for name, n in batch_sources.items()})
        if not batch_sources and not skipped:
            self.count = 0
        else:
            self.count += 1
            self.last = describe(batch_sources, skipped, int(batch.response_mask.sum()))
        metrics["training/nonfinite_streak"] = float(self.count)
        return metrics

    def exhausted(self) -> bool:
        return self.limit is not None and self.count >= self.limit
