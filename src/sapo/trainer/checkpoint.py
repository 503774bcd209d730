"""Checkpoints that a crash cannot break, resume look-up, and export to a Hugging Face directory.

Layout (verl's names): ``<run_dir>/global_step_<N>/`` holds ``model.pt``, ``optimizer.pt``, ``scheduler.pt``,
one ``<name>.pt`` per extra component (e.g. ``critic.pt``), ``extra_state.pt`` (sampler position, KL
controller, ...), ``rng_state.pt`` and, written last, ``meta.json``.
``<run_dir>/latest_checkpointed_iteration.txt`` holds the newest complete step.

A save is atomic in three moves:
  1. every file is written into ``<run_dir>/.tmp_global_step_<N>.<pid>/`` and fsynced;
  2. the directory is renamed to ``global_step_<N>`` (atomic on POSIX) and the run directory fsynced;
  3. the tracker file is replaced atomically (temp file, fsync, ``os.replace``).
A crash before 3 leaves the tracker on the previous checkpoint, which is untouched; leftover ``.tmp_*``
directories are never read and are removed by the next save.

Checkpoints load with ``torch.load(weights_only=True)``: ``extra_state`` must hold only tensors, numbers,
strings, booleans, None, lists/tuples and string-keyed dicts (checked when saving, so a bad value fails
at save time, not at resume time).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sapo.errors import ConfigError, UserError
from sapo.run_dir import (  # noqa: F401  (checkpoint_step and list_checkpoints: this module's API too)
    META_FILE,
    STEP_PREFIX,
    TRACKER_FILE,
    checkpoint_dir,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
)


# -------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if present) every CUDA device's generator state."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # This process's device only: get_rng_state_all would make every rank of a multi-GPU run open a
        # CUDA context (hundreds of MiB) on every GPU of its node.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_random_state(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints before 2026-12: one state per visible device
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def _as_python_random_state(state):
    version, internal, gauss = state  # torch.load returns lists where Python gave tuples
    return version, tuple(internal), gauss


# ------------------------------------------------------------------------------------------- save
def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module | Mapping[str, Any],
    optimizer=None,
    scheduler=None,
    extra_state: dict[str, Any] | None = None,
    components: dict[str, Any] | None = None,
    rng: bool = True,
    rng_states: list[dict[str, Any]] | None = None,
    max_to_keep: int | None = None,
) -> Path:
    """Write ``global_step_<step>`` atomically and point the tracker at it; keep only the newest
    ``max_to_keep`` checkpoints when given (``trainer.max_actor_ckpt_to_keep``). Returns the directory.

    ``model``, ``optimizer``, ``scheduler`` and each of ``components`` (critic, critic optimizer, ...) are
    objects with ``state_dict()`` or state dicts themselves. With FSDP, gather full state dicts on every rank
    (``torch.distributed.checkpoint.state_dict.get_model_state_dict(..., full_state_dict=True)``) and call
    this on rank 0 only. ``rng_states``: one :func:`capture_rng_state` per rank, gathered with
    ``all_gather_object``, so each rank resumes its own random streams; default: this process's.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(run_dir)
    _check_plain(extra_state or {}, "extra_state")
    final = checkpoint_dir(run_dir, step)
    tmp = run_dir / f".tmp_{STEP_PREFIX}{step}.{os.getpid()}"
    tmp.mkdir()
    try:
        states = {"model": model, "optimizer": optimizer, "scheduler": scheduler, **(components or {})}
        rng_state = (
            ({"per_rank": rng_states} if rng_states is not None else capture_rng_state()) if rng else None
        )
        files = _write_payload(tmp, states, extra_state or {}, rng_state)
        _write_json(tmp / META_FILE, {"step": step, "files": files, "saved_at": time.time(), "format": 1})
        _fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(run_dir / TRACKER_FILE, str(step))
    if max_to_keep is not None and max_to_keep > 0:
        prune_checkpoints(run_dir, keep=max_to_keep)
    return final


def _write_payload(
    directory: Path, states: dict[str, Any], extra_state: dict, rng_state: dict | None
) -> list[str]:
    payload = {}
    for name, obj in states.items():
        if obj is None:
            continue
        if name in {"extra_state", "rng_state", "meta"}:
            raise ValueError(f"component name {name!r} is reserved; choose another")
        payload[name] = obj if isinstance(obj, Mapping) else obj.state_dict()
    payload["extra_state"] = extra_state
    if rng_state is not None:
        payload["rng_state"] = rng_state
    for name, state in payload.items():
        _save_fsynced(state, directory / f"{name}.pt")
    return sorted(f"{name}.pt" for name in payload)


def _save_fsynced(obj: Any, path: Path) -> None:
    with path.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: Path, data: dict) -> None:
    with path.open("w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` onto ``final``; an existing ``final`` (a re-save of the same step) is moved aside
    first and deleted only after the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(f".old_{final.name}.{os.getpid()}")
        os.replace(final, old)
    os.replace(new, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temp_dirs(run_dir: Path) -> None:
    """Delete what an interrupted save left: half-written ``.tmp_*`` directories, and ``.old_*`` copies of a
    step that was re-saved. An ``.old_`` copy is the only one left when the save stopped between the two
    renames of `_replace_dir` (its step directory is missing): it is then complete, and is put back."""
    for path in run_dir.glob(f".tmp_{STEP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in run_dir.glob(f".old_{STEP_PREFIX}*"):
        step_dir = run_dir / path.name.removeprefix(".old_").rsplit(".", 1)[0]  # .old_global_step_N.<pid>
        if not step_dir.exists() and (path / META_FILE).exists():
            os.replace(path, step_dir)
        else:
            shutil.rmtree(path, ignore_errors=True)


_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict keys must be strings (got {key!r})")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoints hold tensors, numbers, strings, "
            "None, lists and dicts only (convert numpy values with .item() or torch.as_tensor)"
        )


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; returns what was deleted."""
    doomed = [path for _, path in list_checkpoints(run_dir)[:-keep]] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ------------------------------------------------------------------------------------ find / load
def find_resume_checkpoint(
    run_dir: str | Path, resume_mode: str = "auto", resume_from_path: str | Path | None = None
) -> Path | None:
    """The checkpoint a run should continue from (verl's ``trainer.resume_mode``):

    ``disable``: None. ``auto``: the tracker's step if that checkpoint is complete, else the newest complete
    one, else None (a fresh start). ``resume_path``: ``resume_from_path``, which must be a complete
    checkpoint directory.
    """
    if resume_mode == "disable":
        return None
    if resume_mode == "resume_path":
        if not resume_from_path:
            raise ConfigError(
                "trainer.resume_mode=resume_path needs trainer.resume_from_path=<run_dir>/global_step_N"
            )
        path = Path(resume_from_path)
        if not (path / META_FILE).is_file():
            raise ConfigError(
                f"trainer.resume_from_path={path} is not a complete checkpoint (no {META_FILE}); "
                f"point it at a {STEP_PREFIX}N directory listed in {TRACKER_FILE}"
            )
        return path
    if resume_mode != "auto":
        raise ConfigError(f"trainer.resume_mode={resume_mode!r}: choose auto, disable or resume_path")
    return latest_checkpoint(run_dir)


class CheckpointUnreadable(UserError):
    """A file of a complete-looking checkpoint cannot be read: truncated or corrupted after it was saved
    (a half-copied directory, a full disk, a bad block). ``resume_mode=auto`` falls back past it."""


# what torch.load / json raise on a truncated or corrupted file (a zip reader error is a RuntimeError)
UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, OSError, ValueError)


def read_state(path: str | Path, name: str, map_location: str | torch.device = "cpu") -> Any:
    """One saved state (``model``, ``optimizer``, ``extra_state``, a component name, ...) of a checkpoint,
    e.g. a full model state dict to hand to FSDP's ``set_model_state_dict``."""
    file = Path(path) / f"{name}.pt"
    if not file.is_file():
        raise ConfigError(f"checkpoint {path} has no {name}.pt; it was saved without {name}")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except UNREADABLE as err:
        raise CheckpointUnreadable(
            f"{file} cannot be read ({type(err).__name__}: {str(err)[:200]}): it is truncated or corrupted"
        ) from err


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module | None,
    optimizer=None,
    scheduler=None,
    *,
    components: dict[str, Any] | None = None,
    restore_rng: bool = True,
    rank: int = 0,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load states into the given objects (in place; ``None`` skips one) and return ``extra_state``. RNG
    states are restored last (``rank``'s own when the checkpoint holds one per rank), so the run continues
    with exactly the random streams it had when it saved."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise ConfigError(f"{path} is not a complete checkpoint (no {META_FILE})")
    targets = {"model": model, "optimizer": optimizer, "scheduler": scheduler, **(components or {})}
    for name, target in targets.items():
        if target is not None:
            target.load_state_dict(read_state(path, name, map_location))
    extra_state = read_state(path, "extra_state", map_location)
    if restore_rng and (path / "rng_state.pt").is_file():
        state = read_state(path, "rng_state")
        if "per_rank" in state:
            if rank >= len(state["per_rank"]):
                raise ConfigError(
                    f"checkpoint {path} holds RNG states for {len(state['per_rank'])} processes, "
                    f"but this is rank {rank}: resume with the same number of processes"
                )
            state = state["per_rank"][rank]
        restore_rng_state(state)
    return extra_state


# ------------------------------------------------------------------------------------------ export
def export_hf(model, tokenizer, out_dir: str | Path) -> Path:
    """Write a Hugging Face model directory (config, safetensors weights, generation config, tokenizer)
    atomically: into a temporary sibling first, then renamed into place. Pass the unwrapped model (not an
    FSDP wrapper) on one process."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".tmp_{out_dir.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
        _fsync_dir(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_checkpoint_hf(checkpoint_dir: str | Path, model, tokenizer, out_dir: str | Path) -> Path:
    """Load a checkpoint's policy weights into ``model`` (same architecture) and export it with
    :func:`export_hf`."""
    model.load_state_dict(
        torch.load(Path(checkpoint_dir) / "model.pt", map_location="cpu", weights_only=True)
    )
    return export_hf(model, tokenizer, out_dir)
