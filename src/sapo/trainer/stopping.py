"""When the loop saves outside ``trainer.save_freq``, and when it stops early: signals and a save clock.

SLURM and Kubernetes end a job with SIGTERM (then SIGKILL after a grace period); a user presses Ctrl-C
(SIGINT). Either, arriving during training, lets the current step finish, then the loop writes a
checkpoint and stops with :class:`sapo.errors.TrainingInterrupted` (the CLI prints where the checkpoint is
and exits with ``128 + signal``, the shell's convention). A second signal while that happens is not
deferred: the previous handler is restored and the signal re-raised, so the process stops at once (the
checkpoint before the last complete one stays, as after any kill).

``trainer.save_every_minutes`` adds a save when that many minutes have passed since the last one (or the
start), so a run killed without warning (SIGKILL, a lost node) loses at most that much work even with
``save_freq=-1``.

Several processes: each rank sees its own signals (torchrun forwards SIGTERM to every worker, Ctrl-C
reaches the whole process group) and keeps its own clock, so after every step the ranks agree with one
``MAX`` reduction: any rank's stop or due save is every rank's, and all take the same save collectively.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sapo.distributed.world import World

HANDLED = (signal.SIGTERM, signal.SIGINT)
# the code the ranks agree on with MAX: 0 nothing, 1 a save is due, _STOP + signal number: save and stop
# (a stop always saves; of two different signals the larger number, SIGTERM's, wins on every rank)
_SAVE, _STOP = 1, 100


@dataclass
class StepDecision:
    save: bool  # write a checkpoint after this step (besides save_freq)
    stop: int | None  # the signal number to stop for, after the save; None: go on


class StopSignals:
    """A context that turns the first SIGTERM / SIGINT into a request the loop reads after each step.

    Only the main thread can install signal handlers; elsewhere (``train()`` called from a worker thread)
    the context does nothing and signals keep their usual effect.
    """

    def __init__(self, stream=None):
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._stream = stream

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:  # the second one: do what it would have done without us
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        print(
            f"\nsapo train: {name} received: finishing this step, then saving a checkpoint "
            f"(send it again to stop at once, without saving)",
            file=self._stream or sys.stderr,
            flush=True,
        )


class SaveClock:
    """``trainer.save_every_minutes``: is a save due? (None or <= 0: never.)"""

    def __init__(self, minutes: float | None, now: Callable[[], float] = time.monotonic):
        self.seconds = None if minutes is None or minutes <= 0 else 60.0 * minutes
        self.now = now
        self.last = now()

    def due(self) -> bool:
        return self.seconds is not None and self.now() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = self.now()


def decide(signals: StopSignals, clock: SaveClock, world: World) -> StepDecision:
    """What every rank does after this step; one collective when there are several ranks."""
    local = _STOP + signals.received if signals.received is not None else _SAVE if clock.due() else 0
    agreed = world.max(local)
    if agreed < _STOP:
        return StepDecision(save=agreed == _SAVE, stop=None)
    return StepDecision(save=True, stop=agreed - _STOP)
