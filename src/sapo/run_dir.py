"""The run directory: the name of every file a run writes, and readers for them.

One leaf module (standard library and PyYAML only) so the trainer, the resume logic and anything that reads
a finished run (a report, a notebook) agree on the layout without importing the trainer::

    <run_dir>/
      config.yaml                        the resolved config (loads back with `sapo train --config`)
      run_identity.json                  the keys that make the run this run (sapo.trainer.run_identity)
      derived.json                       derived quantities printed at start-up
      startup.txt                        the start-up report as printed
      metrics.jsonl                      one {"step": N, "<metric>": value, ...} object per logged step
      val_generations.jsonl              trainer.log_val_generations samples of each validation
      tensorboard/                       event files (trainer.logger includes tensorboard)
      wandb/, wandb_run_id.txt           wandb's files and the id a resumed run continues
      data/train.parquet, test.parquet   the built-in task's prompts (data.train_files null)
      global_step_<N>/                   a checkpoint; complete once its meta.json exists
      latest_checkpointed_iteration.txt  the newest complete checkpoint's step (verl's tracker file)
      hf_model/                          the final policy as a Hugging Face directory
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
IDENTITY_FILE = "run_identity.json"
DERIVED_FILE = "derived.json"
STARTUP_FILE = "startup.txt"
METRICS_FILE = "metrics.jsonl"
VAL_GENERATIONS_FILE = "val_generations.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id.txt"
DATA_DIR = "data"
TRAIN_FILE = "train.parquet"  # under DATA_DIR
VAL_FILE = "test.parquet"  # under DATA_DIR (verl's name for the validation split)
HF_MODEL_DIR = "hf_model"
STEP_PREFIX = "global_step_"
META_FILE = "meta.json"  # written last into a checkpoint: its presence marks the checkpoint complete
TRACKER_FILE = "latest_checkpointed_iteration.txt"
SHARDS_DIR = "shards"  # in a checkpoint saved by several processes: torch.distributed.checkpoint files


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"{STEP_PREFIX}{step}"


def is_complete_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, directory)``, oldest first."""
    out = []
    for path in Path(run_dir).glob(f"{STEP_PREFIX}*"):
        suffix = path.name[len(STEP_PREFIX) :]
        if suffix.isdigit() and is_complete_checkpoint(path):
            out.append((int(suffix), path))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The tracker's checkpoint if it is complete, else the newest complete one, else None."""
    tracker = Path(run_dir) / TRACKER_FILE
    if tracker.is_file():
        text = tracker.read_text().strip()
        if text.isdigit() and is_complete_checkpoint(checkpoint_dir(run_dir, int(text))):
            return checkpoint_dir(run_dir, int(text))
    complete = list_checkpoints(run_dir)
    return complete[-1][1] if complete else None


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint directory was saved at (from its meta.json)."""
    return int(json.loads((Path(path) / META_FILE).read_text())["step"])


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order; ``path`` is the run directory or the file itself.
    A missing file reads as no records; a torn last line (the run was killed while writing it) is left out.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    with contextlib.suppress(json.JSONDecodeError):
        records += [json.loads(line) for line in lines[-1:]]
    return records


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run stored, as a nested dict."""
    import yaml

    return yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text()) or {}


def read_derived(run_dir: str | Path) -> dict[str, Any]:
    """The derived quantities a run printed at start-up (sequences per step, effective aggregation, ...)."""
    return json.loads((Path(run_dir) / DERIVED_FILE).read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(directory: str | Path, prefix: str) -> list[Path]:
    """Delete the temporary directories ``<prefix>...<pid>...`` under ``directory`` whose writing process
    is gone (a kill during an export or a warm start); a live writer's are left alone. The writer's pid is
    the first run of digits after ``prefix``. Returns what was deleted."""
    removed = []
    for path in Path(directory).glob(f"{prefix}*"):
        match = re.match(r"\D*(\d+)", path.name[len(prefix) :])
        if path.is_dir() and match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
