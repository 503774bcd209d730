"""Reward managers: score a batch of decoded responses (verl's ``reward_model.reward_manager``).

- ``naive``: the score of the reward function, one per response (verl's NaiveRewardManager).
- ``dapo``: the same plus DAPO's overlong-buffer penalty (Yu et al., arXiv 2503.14476, "soft overlong
  punishment"): with ``L_max = max_response_length`` and ``L_buf = overlong_buffer_len``, a response of
  ``L`` valid tokens gets ``min(0, -(L - (L_max - L_buf)) / L_buf * overlong_penalty_factor)`` added, i.e.
  0 up to ``L_max - L_buf`` tokens, falling linearly to ``-overlong_penalty_factor`` at ``L_max``
  (verl's DAPORewardManager semantics; it also logs ``acc``, ``overlong_reward`` and ``overlong``).
  ``overlong_buffer_len=0`` turns the penalty off (verl's ``overlong_buffer.enable=false``).

Failures (see :mod:`sapo.rewards.execution`): with ``on_error="raise"`` (default) a batch with a failing
sample raises :class:`RewardError` naming the first and the count; with ``on_error="zero"`` each scores 0,
is logged, and is counted in :class:`RewardResult` whose :meth:`RewardResult.metrics` gives
``reward/failures`` and ``reward/timeouts`` (counts for the batch). Either way, more than
``max_error_fraction`` (default 0.5) of a batch failing is an error: the function is broken for the data.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sapo.errors import RewardError
from sapo.rewards.dispatch import default_compute_score
from sapo.rewards.execution import Outcome, WorkerPool, call_in_process

log = logging.getLogger(__name__)


@dataclass
class RewardSample:
    """One response to score. ``response`` is the decoded response text without special tokens;
    ``response_length`` its number of valid tokens (the DAPO penalty needs it); ``uid`` names the sample
    in errors (e.g. the row index)."""

    data_source: str
    response: str
    ground_truth: Any
    extra_info: dict | None = None
    response_length: int = 0
    uid: Any = None


@dataclass
class RewardResult:
    """Per-sample ``scores`` (what training uses), ``extra_info`` (key -> one value per sample, verl's
    ``reward_extra_info``; None where a sample had no value), failure flags and counts."""

    scores: list[float]
    extra_info: dict[str, list] = field(default_factory=dict)
    failed: list[bool] = field(default_factory=list)
    num_timeouts: int = 0
    failure_messages: list[str] = field(default_factory=list)

    @property
    def num_failures(self) -> int:
        return sum(self.failed)

    def select(self, rows: list[int]) -> RewardResult:
        """The result of the samples ``rows``, in that order (batch-level counts and messages kept)."""
        return RewardResult(
            scores=[self.scores[row] for row in rows],
            extra_info={key: [values[row] for row in rows] for key, values in self.extra_info.items()},
            failed=[self.failed[row] for row in rows] if self.failed else [],
            num_timeouts=self.num_timeouts,
            failure_messages=list(self.failure_messages),
        )

    @classmethod
    def concat(cls, parts: list[RewardResult]) -> RewardResult:
        """One result of ``parts``' samples in order (a key one part lacks is None for its samples)."""
        keys = sorted({key for part in parts for key in part.extra_info})
        return cls(
            scores=[s for part in parts for s in part.scores],
            extra_info={
                key: [v for part in parts for v in part.extra_info.get(key, [None] * len(part.scores))]
                for key in keys
            },
            failed=[f for part in parts for f in part.failed],
            num_timeouts=sum(part.num_timeouts for part in parts),
            failure_messages=[m for part in parts for m in part.failure_messages],
        )

    def metrics(self) -> dict[str, float]:
        return {"reward/failures": float(self.num_failures), "reward/timeouts": float(self.num_timeouts)}


def describe(sample: RewardSample, position: int) -> str:
    uid = "" if sample.uid is None else f", uid {sample.uid!r}"
    return f"sample {position}{uid} (data_source {sample.data_source!r}, response {sample.response[:60]!r})"


class NaiveRewardManager:
    """Score each response with ``compute_score`` (default: :func:`default_compute_score`)."""

    name = "naive"

    def __init__(
        self,
        compute_score=None,
        *,
        on_error: str = "raise",
        timeout_s: float | None = None,
        num_workers: int = 1,
        max_error_fraction: float = 0.5,
    ):
        if on_error not in ("raise", "zero"):
            raise RewardError(f"on_error must be 'raise' or 'zero' (got {on_error!r})")
        if not 0 <= max_error_fraction <= 1:
            raise RewardError(f"max_error_fraction must be in [0, 1] (got {max_error_fraction})")
        self.max_error_fraction = max_error_fraction
        if timeout_s is not None and timeout_s <= 0:
            raise RewardError(f"the reward timeout must be > 0 seconds or unset (got {timeout_s})")
        self.compute_score = compute_score or default_compute_score
        self.on_error = on_error
        self.timeout_s = timeout_s
        self.num_workers = num_workers
        self._pool: WorkerPool | None = None

    def __call__(self, samples: Sequence[RewardSample]) -> RewardResult:
        outcomes = self._call_all(samples)
        result = RewardResult(scores=[], failed=[])
        extra_rows = []
        for position, (sample, outcome) in enumerate(zip(samples, outcomes)):
            failed = outcome.error is not None
            result.failed.append(failed)
            if failed:
                message = (
                    f"reward function {self.compute_score!r} {outcome.error} on {describe(sample, position)}"
                )
                result.failure_messages.append(message)
                result.num_timeouts += outcome.timed_out
            result.scores.append(0.0 if failed else outcome.score)
            extra_rows.append(self.extra_for(sample, outcome))
        if result.num_failures:
            self._handle_failures(result)
        keys = list(dict.fromkeys(k for row in extra_rows for k in row))
        result.extra_info = {k: [row.get(k) for row in extra_rows] for k in keys}
        self.adjust(samples, result)
        return result

    def extra_for(self, sample: RewardSample, outcome: Outcome) -> dict:
        return outcome.extra

    def adjust(self, samples: Sequence[RewardSample], result: RewardResult) -> None:
        """Hook for subclasses: change ``result.scores`` after scoring (the DAPO penalty)."""

    def _call_all(self, samples: Sequence[RewardSample]) -> list[Outcome]:
        calls = [
            {
                "data_source": s.data_source,
                "solution_str": s.response,
                "ground_truth": s.ground_truth,
                "extra_info": s.extra_info,
            }
            for s in samples
        ]
        if self.timeout_s is None:
            return [call_in_process(self.compute_score, kwargs) for kwargs in calls]
        if self._pool is None:
            self._pool = WorkerPool(
                self.compute_score, num_workers=self.num_workers, timeout_s=self.timeout_s
            )
        return self._pool.run(calls)

    def _handle_failures(self, result: RewardResult) -> None:
        """``on_error="raise"``: a RewardError naming the first failure and the count. ``"zero"``: the
        failures keep their 0 and are logged, unless more than ``max_error_fraction`` of the batch failed,
        which means a broken function rather than a few hard samples, and is an error too."""
        failures, total = result.num_failures, len(result.scores)
        count = f"{failures} of {total} samples failed (first: {result.failure_messages[0]})"
        too_many = failures > self.max_error_fraction * total
        if too_many:
            raise RewardError(
                f"{count}; more than reward_model.max_error_fraction={self.max_error_fraction:g} of the "
                "batch, so the function is broken for this data rather than a few hard samples (scoring them "
                "0 would train on zeros): fix the reward function, or check that data_source and ground "
                "truth are what it expects"
            )
        if self.on_error == "raise":
            raise RewardError(
                f"{count}: fix the reward function, or choose reward_model.on_error='zero' to score such "
                "samples 0 and count them in reward/failures (the run still stops when more than "
                f"reward_model.max_error_fraction={self.max_error_fraction:g} of a batch fail)"
            )
        for message in result.failure_messages:
            log.warning("%s; scored 0", message)

    def close(self) -> None:
        """Stop the worker processes (only started when a timeout is set)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


class DAPORewardManager(NaiveRewardManager):
    """Naive scoring plus DAPO's overlong-buffer penalty (formula in the module docstring)."""

    name = "dapo"

    def __init__(
        self,
        compute_score=None,
        *,
        overlong_buffer_len: int,
        overlong_penalty_factor: float,
        max_response_length: int,
        **kwargs,
    ):
        super().__init__(compute_score, **kwargs)
        if not 0 <= overlong_buffer_len <= max_response_length:
            raise RewardError(
                f"overlong_buffer.len must be in 0..max_response_length={max_response_length} "
                f"(got {overlong_buffer_len}); 0 turns the penalty off"
            )
        if overlong_penalty_factor < 0:
            raise RewardError(f"overlong_buffer.penalty_factor must be >= 0 (got {overlong_penalty_factor})")
        self.overlong_buffer_len = overlong_buffer_len
        self.overlong_penalty_factor = overlong_penalty_factor
        self.max_response_length = max_response_length

    def overlong_penalty(self, response_length: int) -> float:
        if self.overlong_buffer_len == 0:  # verl's overlong_buffer.enable=false
            return 0.0
        expected = self.max_response_length - self.overlong_buffer_len
        exceed = response_length - expected
        return min(-exceed / self.overlong_buffer_len * self.overlong_penalty_factor, 0.0)

    def extra_for(self, sample: RewardSample, outcome: Outcome) -> dict:
        # verl logs the plain score as "acc" when the function returns a number.
        return outcome.extra if outcome.extra else {"acc": outcome.score}

    def adjust(self, samples: Sequence[RewardSample], result: RewardResult) -> None:
        penalties = [self.overlong_penalty(s.response_length) for s in samples]
        result.scores = [score + penalty for score, penalty in zip(result.scores, penalties)]
        result.extra_info["overlong_reward"] = penalties
        result.extra_info["overlong"] = [p < 0 for p in penalties]


REWARD_MANAGERS = {"naive": NaiveRewardManager, "dapo": DAPORewardManager}


def build_reward_manager(name: str, compute_score=None, **kwargs):
    """The reward manager called ``name`` (``naive`` or ``dapo``; verl's ``reward_model.reward_manager``)."""
    if name not in REWARD_MANAGERS:
        raise RewardError(
            f"unknown reward manager {name!r}: set reward_model.reward_manager to one of "
            f"{', '.join(REWARD_MANAGERS)}"
        )
    return REWARD_MANAGERS[name](compute_score, **kwargs)
