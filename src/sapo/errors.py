"""Errors a user can fix. The CLI prints their message (never a traceback) and exits with status 2.

Messages name the problem and the fix, e.g. ``"tau_pos must be > 0 (got 0.0): set
actor_rollout_ref.actor.tau_pos to a positive number such as 1.0"``.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a config value, a file, a name. Subclass of ValueError so library callers
    can catch it without importing this module."""


class ConfigError(UserError):
    """An invalid or unsupported configuration key or value."""


class DataError(UserError):
    """A dataset file or row that cannot be used."""


class RewardError(UserError):
    """A reward function that raised, returned a non-number or NaN, or timed out."""


def unknown_name(kind: str, name: str, key: str, valid) -> ConfigError:
    """The error for a name no registry holds, e.g. ``unknown policy loss 'sapoo': set
    actor_rollout_ref.actor.policy_loss.loss_mode to one of ...``."""
    return ConfigError(f"unknown {kind} {name!r}: set {key} to one of {', '.join(sorted(valid))}")


class TrainingInterrupted(Exception):
    """A run stopped by SIGTERM / SIGINT after its current step, with a checkpoint saved
    (`sapo.trainer.stopping`). Not a user error: the CLI exits with ``128 + signal`` (143 for SIGTERM, 130
    for SIGINT), the status a shell gives a process that signal ended."""

    def __init__(self, signum: int, step: int, checkpoint):
        import signal

        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; checkpoint: {checkpoint}. To continue, run the same "
            "command again: trainer.resume_mode=auto (the default) resumes from it"
        )
