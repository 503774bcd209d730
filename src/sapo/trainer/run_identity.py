"""What makes a run the run it is, kept in its directory, so ``resume_mode=auto`` never continues (or
overwrites) another run's checkpoints.

verl's run directory is ``checkpoints/<project_name>/<experiment_name>``, and every run that names neither
shares ``checkpoints/sapo/default``. Re-running a command there must resume it; a different command there
(another model, other data, another seed or objective) must not train on from the first one's weights. So
each run writes ``run_identity.json`` (`IDENTITY_KEYS`, paths made absolute) and, before anything is
written, a run that would auto-resume compares it with its own: a mismatch is a ConfigError naming each
differing key and the fixes, and nothing in the directory is touched. Keys left out may change on resume
(the step budget, learning rate, logging, lengths: a longer response budget mid-run is common practice).
A directory without the file (an older sapo, or no checkpoint yet) is not refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from sapo.config import Config
from sapo.errors import ConfigError
from sapo.run_dir import IDENTITY_FILE, list_checkpoints

IDENTITY_KEYS = (
    "actor_rollout_ref.model.path",
    "data.train_files",
    "data.val_files",
    "trainer.seed",
    "data.seed",
    "algorithm.adv_estimator",
    "actor_rollout_ref.actor.policy_loss.loss_mode",
    "critic.enable",
)
BUILTIN_MODEL_KEYS = ("sapo.tiny_model", "sapo.warm_start")  # define the model when model.path is null
BUILTIN_DATA_KEYS = ("sapo.task",)  # define the data when data.train_files is null


def run_identity(config: Config) -> dict[str, Any]:
    keys = list(IDENTITY_KEYS)
    if config.actor_rollout_ref.model.path is None:
        keys += BUILTIN_MODEL_KEYS
    if config.data.train_files is None:
        keys += BUILTIN_DATA_KEYS
    return {key: _plain(key, _value(config, key)) for key in keys}


def _value(config: Config, key: str) -> Any:
    """The field or whole section (``sapo.task``) ``key`` names."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _plain(key: str, value: Any) -> Any:
    """JSON-comparable: sections as dicts, file paths absolute (the same files from another directory)."""
    if dataclasses.is_dataclass(value):
        return json.loads(json.dumps(dataclasses.asdict(value), default=str))
    if key.endswith(("model.path", "_files")) and value is not None:
        paths = [value] if isinstance(value, str) else list(value)
        absolute = [str(Path(p).expanduser().absolute()) if "://" not in str(p) else str(p) for p in paths]
        return absolute[0] if isinstance(value, str) else absolute
    return value


def check_run_identity(config: Config, run_dir: Path) -> None:
    """Before a run writes anything: ConfigError when ``resume_mode=auto`` would resume a checkpoint of
    ``run_dir`` saved by a run with another identity."""
    if config.trainer.resume_mode != "auto" or not list_checkpoints(run_dir):
        return
    stored = _read(run_dir / IDENTITY_FILE)
    if stored is None:
        return
    mine = run_identity(config)
    differ = [key for key in mine if stored.get(key, mine[key]) != mine[key]]
    if not differ:
        return
    changes = "; ".join(f"{key}: {_show(stored[key])} there, {_show(mine[key])} now" for key in differ)
    raise ConfigError(
        f"{run_dir} holds the checkpoints of another run ({changes}), and trainer.resume_mode=auto would "
        "continue that run's weights with this config. Nothing was written. Give this run its own "
        "directory: trainer.experiment_name=<name> (the directory is checkpoints/<project_name>/"
        "<experiment_name>) or trainer.default_local_dir=<dir>; or, to replace the old run, "
        "trainer.resume_mode=disable (a fresh start here; its checkpoints are overwritten as this run saves)"
    )


def record_run_identity(config: Config, run_dir: Path) -> None:
    """Write this run's identity (atomically: a kill leaves the old file or the new one)."""
    tmp = run_dir / f".{IDENTITY_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(run_identity(config), indent=2, sort_keys=True))
    os.replace(tmp, run_dir / IDENTITY_FILE)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
