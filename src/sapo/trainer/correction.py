"""The trainer's side of rollout correction and of the log-prob gap guard (the maths is
:mod:`sapo.core.rollout_correction`; docs/rollout_correction.md).

Per step, after the rollout and before the update:

- ``old_log_prob`` is the trainer's forward, or, with ``algorithm.rollout_correction.bypass_mode``, the
  rollout's own log-probs (no forward; the configured policy loss is kept, unlike verl);
- ``actor_rollout_ref.rollout.max_logprob_gap`` stops the run, before the update, when the mean
  ``|old_log_prob - rollout_log_prob|`` per valid token exceeds it;
- the IS weights and the rejection mask are computed once on the whole (gathered) batch, so they do not
  depend on the micro-batch size or the number of processes.
"""

from __future__ import annotations

from sapo.batch import Batch
from sapo.config import Config
from sapo.core.rollout_correction import RolloutCorrection, logprob_gap, rollout_correction
from sapo.errors import UserError
from sapo.trainer.actor import needs_old_log_prob
from sapo.trainer.ppo_update import UpdateSchedule

_CALC = "actor_rollout_ref.rollout.calculate_log_probs=True"


class LogProbGapError(UserError):
    """The rollout engine's log-probs are further from the trainer's than ``rollout.max_logprob_gap``."""


def needs_trainer_old_log_prob(config: Config, num_sequences: int, schedule: UpdateSchedule, kl_ctrl) -> bool:
    """Whether the trainer computes ``old_log_prob``: when the update needs it (``needs_old_log_prob``), for
    the in-reward KL, and for the gap guard and rollout correction, which compare it with the rollout's."""
    rc = config.algorithm.rollout_correction
    return (
        needs_old_log_prob(num_sequences, schedule)
        or kl_ctrl is not None
        or config.actor_rollout_ref.rollout.max_logprob_gap is not None
        or rc.rollout_is is not None
        or rc.rollout_rs is not None
    )


def bypass_old_log_prob(batch: Batch):
    """``old_log_prob`` in bypass mode: the rollout's log-probs ([N, R], detached copy)."""
    if batch.rollout_log_probs is None:
        raise UserError(
            "algorithm.rollout_correction.bypass_mode=true uses the rollout engine's log-probs as "
            f"old_log_prob, but the engine returned none: set {_CALC}"
        )
    return batch.rollout_log_probs.detach().clone()


def check_logprob_gap(batch: Batch, max_gap: float | None) -> None:
    """Raise :class:`LogProbGapError` when the mean ``|old_log_prob - rollout_log_prob|`` over valid tokens
    exceeds ``max_gap`` (None: no check). Called before the update, so the step is not trained on and the
    last checkpoint is one of a good step."""
    if max_gap is None or batch.old_log_prob is None:
        return
    if batch.rollout_log_probs is None:
        raise UserError(
            "actor_rollout_ref.rollout.max_logprob_gap is set but the rollout engine returned no "
            f"log-probs: set {_CALC}"
        )
    gap = logprob_gap(batch.old_log_prob, batch.rollout_log_probs, batch.response_mask)
    if gap > max_gap:
        raise LogProbGapError(
            f"stopping: rollout_corr/mean_abs_diff = {gap:.6g} (mean |old_log_prob - rollout_log_prob| per "
            f"valid token) exceeds actor_rollout_ref.rollout.max_logprob_gap = {max_gap:g}. The rollout "
            "engine and the trainer disagree about the policy that sampled this batch; likely causes: "
            "stale engine weights (a weight sync that did not happen or did not take), a dtype mismatch "
            "between engine and trainer (e.g. bfloat16 vs float32), or a different sampling temperature or "
            "logits processing. This step was not trained on; the last checkpoint is kept. Fix the cause, "
            "or raise max_logprob_gap (null: no check) to continue."
        )


def batch_correction_on(rc) -> bool:
    """Whether IS weights or rejection are configured (``rc`` = ``algorithm.rollout_correction``)."""
    return rc.rollout_is is not None or rc.rollout_rs is not None


def batch_correction(batch: Batch, rc) -> RolloutCorrection | None:
    """IS weights and rejection mask of the whole batch (``rc`` = ``algorithm.rollout_correction``);
    None when neither is configured, and in bypass mode."""
    if rc.bypass_mode or not batch_correction_on(rc):
        return None
    return rollout_correction(
        batch.old_log_prob,
        batch.rollout_log_probs,
        batch.response_mask,
        rollout_is=rc.rollout_is,
        rollout_is_threshold=rc.rollout_is_threshold,
        rollout_is_batch_normalize=rc.rollout_is_batch_normalize,
        rollout_rs=rc.rollout_rs,
        rollout_rs_threshold=rc.rollout_rs_threshold,
    )
