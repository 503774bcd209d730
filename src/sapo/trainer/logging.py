"""Metric sinks for a run: ``metrics.jsonl`` (always), a console progress bar, TensorBoard and wandb.

``trainer.logger`` picks the optional sinks: ``console`` (a tqdm bar with the key metrics; validation
headlines printed as lines), ``tensorboard`` (event files under ``<run_dir>/tensorboard``; needs the
``tensorboard`` package), ``wandb`` (needs ``pip install 'sapo-rl[wandb]'``; ``WANDB_MODE=offline`` works
without a network and writes under ``<run_dir>/wandb``). Create the logger on rank 0 only.

``metrics.jsonl`` holds one JSON object per logged step: ``{"step": N, "<metric>": value, ...}``. When a run
resumes from step N, lines after N (written after the last checkpoint, before the stop) are dropped so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from sapo.errors import ConfigError, UserError
from sapo.run_dir import METRICS_FILE, TENSORBOARD_DIR, WANDB_ID_FILE

SINKS = ("console", "tensorboard", "wandb")

# (metric name or prefix, short label) shown on the progress bar when present.
PROGRESS_KEYS = (
    ("critic/score/mean", "score"),
    ("val-core/", "val"),
    ("actor/pg_loss", "pg_loss"),
    ("actor/sapo/gate_weight_mean", "gate"),
    ("actor/ppo_kl", "kl"),
    ("response_length/mean", "len"),
    ("timing_s/step", "s/step"),
)


def to_float(value: Any) -> float:
    """A Python float from a number, a 0-d/1-element tensor or a numpy scalar."""
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def _is_number(value: Any) -> bool:
    try:
        to_float(value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


class ProgressBar:
    """A tqdm bar over training steps whose postfix shows the key metrics of the latest step."""

    def __init__(self, total: int | None, initial: int = 0, file=None, disable: bool = False):
        from tqdm import tqdm

        self._file = file or sys.stderr
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc="sapo",
            unit="step",
            file=self._file,
            disable=disable,
            dynamic_ncols=True,
        )
        self._last: dict[str, str] = {}

    def update(self, step: int, metrics: dict[str, float]) -> None:
        for key, label in PROGRESS_KEYS:
            hits = [name for name in metrics if name == key or (key.endswith("/") and name.startswith(key))]
            if hits:
                self._last[label] = f"{metrics[sorted(hits)[0]]:.4g}"
        self._bar.set_postfix(self._last, refresh=False)
        self._bar.update(max(0, step - self._bar.n))

    def write(self, text: str) -> None:
        self._bar.write(text, file=self._file)

    def close(self) -> None:
        self._bar.close()


class MetricsLogger:
    """Fan metrics out to every sink. Call ``log(metrics, step)`` once per step with all of that step's
    metrics (training and validation together: wandb commits each call); ``close()`` at the end (or use it
    as a context manager)."""

    def __init__(
        self,
        run_dir: str | Path,
        loggers: list[str] | tuple[str, ...] = ("console",),
        *,
        project: str = "sapo",
        experiment: str = "default",
        config: dict | None = None,
        total_steps: int | None = None,
        resume_step: int | None = None,
        progress_file=None,
    ):
        unknown = [name for name in loggers if name not in SINKS]
        if unknown:
            raise ConfigError(f"trainer.logger: unknown sink(s) {unknown}; choose from {', '.join(SINKS)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.metrics_path, after_step=resume_step)
        self._jsonl = self.metrics_path.open("a")
        self._tensorboard = (
            _open_tensorboard(self.run_dir / TENSORBOARD_DIR, resume_step)
            if "tensorboard" in loggers
            else None
        )
        self._wandb = (
            _open_wandb(self.run_dir, project, experiment, config, resume_step)
            if "wandb" in loggers
            else None
        )
        self.progress = (
            ProgressBar(total_steps, initial=resume_step or 0, file=progress_file)
            if "console" in loggers
            else None
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        try:
            values = {name: to_float(value) for name, value in metrics.items()}
        except (TypeError, ValueError, RuntimeError) as err:
            bad = {k: type(v).__name__ for k, v in metrics.items() if not _is_number(v)}
            raise TypeError(f"metrics must be numbers or one-element tensors; not numbers: {bad}") from err
        record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, global_step=step)
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step, commit=True)  # one call per step: show it now
        if self.progress is not None:
            self.progress.update(step, values)
            headline = {k: v for k, v in values.items() if k.startswith("val-core/")}
            if headline:
                self.progress.write(f"step {step}: " + "  ".join(f"{k}={v:.4g}" for k, v in headline.items()))

    def write(self, text: str) -> None:
        """A line on the console that does not break the progress bar."""
        if self.progress is not None:
            self.progress.write(text)

    def close(self) -> None:
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self.progress is not None:
            self.progress.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SilentLogger:
    """The logger of every rank but 0 in a multi-process run: the metrics are the same on every rank
    (reduced or computed on the gathered batch), so only rank 0 prints and writes them."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records with step > ``after_step`` (rewritten atomically), and a line that is not a whole
    record: a kill in the middle of a write leaves a torn last line, which must not break every resume.
    Any JSON-lines file of ``{"step": N, ...}`` records (``val_generations.jsonl`` too)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if _step_of(line) <= after_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _step_of(line: str) -> float:
    """The record's step; infinity (never kept) for a blank, torn or foreign line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return math.inf
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, (int, float)) else math.inf


def _open_tensorboard(log_dir: Path, resume_step: int | None = None):
    """A SummaryWriter; when the directory holds an earlier attempt's events, the steps after
    ``resume_step`` (all of them on a fresh start) are purged, so a resumed run's replayed steps replace
    those of the attempt that was killed instead of appearing twice (TensorBoard's ``purge_step``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UserError(
            "trainer.logger includes tensorboard but the tensorboard package is missing: "
            "pip install tensorboard (or pip install 'sapo-rl[tensorboard]'), or drop "
            "tensorboard from trainer.logger"
        ) from err
    earlier = log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))
    purge_step = ((resume_step or 0) + 1 if resume_step else 0) if earlier else None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _open_wandb(run_dir: Path, project: str, experiment: str, config: dict | None, resume_step: int | None):
    try:
        import wandb
    except ImportError as err:
        raise UserError(
            "trainer.logger includes wandb but wandb is not installed: pip install "
            "'sapo-rl[wandb]' (or pip install wandb), or drop wandb from trainer.logger"
        ) from err
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else None
    try:
        run = wandb.init(
            project=project,
            name=experiment,
            config=config or {},
            dir=str(run_dir),
            id=run_id,
            resume="allow" if run_id else None,
        )
    except Exception as err:  # wandb raises its own types for login/network problems
        raise UserError(
            f"wandb could not start ({err}); log in with `wandb login`, or set WANDB_MODE=offline "
            "to log without a network and sync later with `wandb sync`"
        ) from err
    id_file.write_text(run.id)
    return run
