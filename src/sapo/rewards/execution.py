"""Calling reward functions safely: result checks, and timeouts enforced in worker processes.

A reward function can fail in four ways: it raises, returns something that is not a number (or a dict
without a numeric ``"score"``), returns NaN or infinity, or never returns. Each becomes a
:class:`Outcome` with an ``error`` text; the reward manager turns that into a :class:`RewardError` naming
the sample, or into a counted score of 0.

Timeouts. A Python function cannot be interrupted robustly from inside its own process: a thread with a
timeout leaves the function running (and holding the GIL and whatever it locked), and ``signal.alarm``
only works in the main thread and not during long C calls. So with ``timeout_s`` set, calls run in a small
pool of worker processes (``multiprocessing`` "spawn" context: no fork of a threaded trainer process);
a call that passes its deadline gets its worker killed (SIGKILL) and replaced. The function must be
picklable for that: a module-level function, or one loaded with
:func:`sapo.rewards.custom.load_custom_reward_function`. Without ``timeout_s`` calls run in-process
(no overhead, no timeout).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from numbers import Real

from sapo.errors import RewardError

STARTUP_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    """What one call produced: ``score`` and ``extra`` (other keys of a dict result), or ``error``."""

    score: float = 0.0
    extra: dict = field(default_factory=dict)
    error: str | None = None
    timed_out: bool = False


def check_result(result) -> Outcome:
    """Validate a reward function's return value: a real number (bool, int, float, numpy scalar, 0-d
    tensor), or a dict with such a ``"score"``."""
    extra = {}
    if isinstance(result, dict):
        if "score" not in result:
            keys = sorted(result, key=repr)  # by repr: keys of mixed types do not compare
            return Outcome(error=f"returned a dict without a 'score' key (keys: {keys})")
        extra = {k: v for k, v in result.items() if k != "score"}
        result = result["score"]
    if getattr(result, "ndim", None) == 0 and hasattr(result, "item"):  # 0-d torch tensor or numpy array
        result = result.item()
    if not isinstance(result, Real):  # bool, int, float, numpy scalars pass
        return Outcome(error=f"returned {type(result).__name__} {_shown(result)}, not a number")
    try:
        score = float(result)
    except OverflowError:  # an int (or Fraction) beyond float's range
        return Outcome(error=f"returned {_shown(result)}, too large for a float score")
    if not math.isfinite(score):
        return Outcome(error=f"returned {score}, not a finite number")
    return Outcome(score=score, extra=extra)


def _shown(value) -> str:
    """``repr(value)`` cut to 80 characters; a repr that fails (an int of over 4300 digits, a user class)
    must not turn a reward error into a crash."""
    try:
        return f"{value!r:.80}"
    except Exception:
        return f"<a {type(value).__name__} that cannot be shown>"


def call_in_process(function, kwargs: dict) -> Outcome:
    try:
        result = function(**kwargs)
    except (Exception, SystemExit) as err:  # sys.exit() in a reward function fails the call, not the run
        return Outcome(error=f"raised {type(err).__name__}: {err}")
    return check_result(result)


def _worker_main(function, conn) -> None:
    """Loop of a worker process: say ready, then receive ``(i, kwargs)`` and send
    ``(i, ok, result_or_error_text)`` until told to stop."""
    # A SIGTERM / Ctrl-C reaches the whole process group: the trainer handles it (it finishes the step,
    # whose rewards the worker is computing) and stops the worker itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the trainer is gone (killed): nothing more to score
            return
        if message is None:
            return
        i, kwargs = message
        try:
            result = function(**kwargs)
        except Exception as err:
            conn.send((i, False, f"raised {type(err).__name__}: {err}"))
            continue
        try:
            conn.send((i, True, result))
        except Exception as err:  # the result cannot be pickled
            conn.send((i, False, f"returned an object that cannot be sent back ({err})"))


class _Worker:
    def __init__(self, context, function):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(function, child_conn), daemon=True)
        try:
            self.process.start()
        except Exception as err:
            raise RewardError(
                f"reward function {function!r} cannot be sent to a worker process ({type(err).__name__}: "
                f"{err}): define it at module level or load it from a file, or run without a reward timeout"
            ) from err
        child_conn.close()
        self._wait_until_ready(function)
        self.task: tuple[int, float] | None = None  # (sample index, deadline)

    def _wait_until_ready(self, function) -> None:
        # Start-up (a fresh interpreter importing the function's module) must not eat into the first
        # call's timeout, so the pool only hands out work once the worker says it is ready.
        try:
            ready = self.conn.poll(STARTUP_TIMEOUT_S) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise RewardError(
                f"the reward worker process for {function!r} did not start (exit code "
                f"{self.process.exitcode}): check that the function can be imported in a fresh Python process"
            )

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()


class WorkerPool:
    """``num_workers`` processes running ``function``; :meth:`run` enforces ``timeout_s`` per call."""

    def __init__(self, function, *, num_workers: int = 1, timeout_s: float):
        if timeout_s <= 0 or num_workers < 1:
            raise ValueError(f"need timeout_s > 0 and num_workers >= 1 (got {timeout_s}, {num_workers})")
        self.function = function
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(self._context, function) for _ in range(num_workers)]

    def run(self, calls: list[dict]) -> list[Outcome]:
        """Call the function once per kwargs dict; returns one Outcome per call, in order."""
        outcomes: list[Outcome | None] = [None] * len(calls)
        pending = list(range(len(calls)))[::-1]
        while pending or any(w.task for w in self._workers):
            for worker in self._workers:
                if worker.task is None and pending:
                    i = pending.pop()
                    worker.conn.send((i, calls[i]))
                    worker.task = (i, time.monotonic() + self.timeout_s)
            busy = [w for w in self._workers if w.task]
            next_deadline = min(w.task[1] for w in busy)
            ready = wait([w.conn for w in busy], timeout=max(0.0, next_deadline - time.monotonic()))
            for worker in busy:
                i, deadline = worker.task
                if worker.conn in ready:
                    outcomes[i] = self._receive(worker)
                elif time.monotonic() >= deadline:
                    outcomes[i] = Outcome(
                        error=f"did not return within the {self.timeout_s:g} s timeout", timed_out=True
                    )
                    self._replace(worker)
        return outcomes  # type: ignore[return-value]

    def _receive(self, worker: _Worker) -> Outcome:
        try:
            _, ok, payload = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=5)  # reap it so that its exit code is known
            code = worker.process.exitcode
            self._replace(worker)
            return Outcome(error=f"killed its worker process (exit code {code})")
        worker.task = None
        return check_result(payload) if ok else Outcome(error=payload)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        index = self._workers.index(worker)
        self._workers[index] = _Worker(self._context, self.function)

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []
