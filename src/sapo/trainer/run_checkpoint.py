"""Saving, resuming and exporting a run, in one process or several.

One process writes the single-file format of :mod:`sapo.trainer.checkpoint` (``model.pt``,
``optimizer.pt``, ...; ``meta.json`` format 1). Several processes write format 2: the tensors (policy,
AdamW moments, critic) with ``torch.distributed.checkpoint`` into ``shards/``, each rank its own shards in
parallel, plus rank 0's ``scheduler.pt`` / ``extra_state.pt`` and one ``rng_state_rank<r>.pt`` per rank.
Either format resumes in any world size: ``torch.distributed.checkpoint`` reshards on load, and a format-1
file is split with ``distribute_tensor``. A save is atomic as in format 1: every rank writes into one
temporary directory; after a barrier rank 0 adds its files and ``meta.json``, fsyncs, and renames the
directory to ``global_step_<N>``, so a directory of that name is always complete (``resume_mode=auto``
never picks a half-written step), and only then moves the tracker file.

With several nodes, ``trainer.default_local_dir`` must be on a file system every node sees.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from sapo.run_dir import META_FILE, SHARDS_DIR, STEP_PREFIX, TRACKER_FILE, checkpoint_dir
from sapo.trainer import checkpoint as ckpt

FORMAT_SHARDED = 2


def _components(run) -> dict:
    out = {}
    if run.critic is not None:
        out = {"critic": run.critic, "critic_optimizer": run.critic_optimizer}
        if run.critic_scheduler is not None:
            out["critic_scheduler"] = run.critic_scheduler
    return out


def _trained(run) -> dict[str, tuple]:
    """``name -> (model, optimizer, scheduler)`` of what the run trains."""
    out = {"": (run.policy, run.optimizer, run.scheduler)}
    if run.critic is not None:
        out["critic_"] = (run.critic, run.critic_optimizer, run.critic_scheduler)
    return out


# ------------------------------------------------------------------------------------------------ save
def save(run) -> Path:
    """Checkpoint ``global_step_<run.global_step>`` (every rank calls this)."""
    if run.world.size == 1:
        return ckpt.save_checkpoint(
            run.run_dir,
            run.global_step,
            model=run.policy,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            extra_state=run.extra_state(),
            components=_components(run),
            max_to_keep=run.config.trainer.max_actor_ckpt_to_keep,
        )
    return _save_sharded(run)


def _save_sharded(run) -> Path:
    import torch.distributed.checkpoint as dcp

    world, run_dir, step = run.world, run.run_dir, run.global_step
    tmp = run_dir / f".tmp_{STEP_PREFIX}{step}.sharded"
    if world.is_main:
        ckpt.remove_stale_temp_dirs(run_dir)
        tmp.mkdir(parents=True)
    world.barrier()
    tensors, with_state = _tensor_state(run)
    dcp.save(tensors, checkpoint_id=str(tmp / SHARDS_DIR))
    _save_fsynced(ckpt.capture_rng_state(), tmp / f"rng_state_rank{world.rank}.pt")
    world.barrier()  # every rank's shards are on disk
    final = checkpoint_dir(run_dir, step)
    if world.is_main:
        for prefix, (_, _, scheduler) in _trained(run).items():
            if scheduler is not None:
                _save_fsynced(scheduler.state_dict(), tmp / f"{prefix}scheduler.pt")
        _save_fsynced(run.extra_state(), tmp / "extra_state.pt")
        meta = {
            "step": step,
            "format": FORMAT_SHARDED,
            "world_size": world.size,
            "optimizer_state": with_state,
            "saved_at": time.time(),
        }
        with (tmp / META_FILE).open("w") as handle:
            json.dump(meta, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_tree(tmp)
        ckpt._replace_dir(tmp, final)
        ckpt._write_text_atomic(run_dir / TRACKER_FILE, str(step))
        keep = run.config.trainer.max_actor_ckpt_to_keep
        if keep is not None and keep > 0:
            ckpt.prune_checkpoints(run_dir, keep=keep)
    world.barrier()
    return final


def _tensor_state(run, with_state: dict[str, list[str]] | None = None) -> tuple[dict, dict[str, list[str]]]:
    """Every trained tensor by name: ``{prefix}model`` (the state dict) and ``{prefix}optimizer`` (AdamW's
    step and moments by parameter name), as this process holds them (FSDP shards, or whole tensors).
    ``with_state``: for a load, the parameter names the checkpoint has optimizer state for (allocated
    here to be filled in place)."""
    tensors, names_with_state = {}, {}
    for prefix, (model, optimizer, _) in _trained(run).items():
        tensors[f"{prefix}model"] = model.state_dict()
        names = [name for name, _ in model.named_parameters()]
        if with_state is not None:
            for name in with_state[prefix]:
                index = names.index(name)
                p = optimizer.params[index]
                optimizer.state[index] = {
                    "step": 0,
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }
        opt = {}
        for index, state in optimizer.state.items():
            opt[f"{names[index]}.exp_avg"] = state["exp_avg"]
            opt[f"{names[index]}.exp_avg_sq"] = state["exp_avg_sq"]
            opt[f"{names[index]}.step"] = torch.tensor(float(state["step"]))
        tensors[f"{prefix}optimizer"] = opt
        names_with_state[prefix] = [names[i] for i in sorted(optimizer.state)]
    return tensors, names_with_state


def _save_fsynced(obj, path: Path) -> None:
    with path.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        else:
            ckpt._fsync_dir(path)
    ckpt._fsync_dir(root)


# ------------------------------------------------------------------------------------------------ load
def load(run, path: Path) -> dict:
    """Load checkpoint ``path`` (either format) into the run's models, optimizers and schedulers, in
    this world size; returns ``extra_state``."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except ckpt.UNREADABLE as err:
        raise ckpt.CheckpointUnreadable(f"{Path(path) / META_FILE} cannot be read ({err})") from err
    if meta.get("format") != FORMAT_SHARDED:
        if run.world.size == 1:
            return ckpt.load_checkpoint(
                path, run.policy, run.optimizer, run.scheduler, components=_components(run)
            )
        return _load_single_file_sharded(run, Path(path))
    return _load_sharded(run, Path(path), meta)


def _load_sharded(run, path: Path, meta: dict) -> dict:
    import torch.distributed.checkpoint as dcp

    tensors, _ = _tensor_state(run, with_state=meta["optimizer_state"])
    try:
        dcp.load(tensors, checkpoint_id=str(path / SHARDS_DIR))
    except ckpt.UNREADABLE as err:  # a truncated shard file; DCP raises a (wrapped) RuntimeError
        raise ckpt.CheckpointUnreadable(
            f"{path / SHARDS_DIR} cannot be read ({type(err).__name__}: {str(err)[:200]})"
        ) from err
    for prefix, (model, optimizer, scheduler) in _trained(run).items():
        model.load_state_dict(tensors[f"{prefix}model"])
        _read_optimizer(model, optimizer, tensors[f"{prefix}optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt.read_state(path, f"{prefix}scheduler"))
    rng = path / f"rng_state_rank{run.world.rank}.pt"
    if meta["world_size"] == run.world.size and rng.is_file():  # another world size: fresh streams
        ckpt.restore_rng_state(torch.load(rng, weights_only=True))
    return ckpt.read_state(path, "extra_state")


def _read_optimizer(model, optimizer, tensors: dict) -> None:
    for index, (name, _) in enumerate(model.named_parameters()):
        if f"{name}.step" in tensors:
            optimizer.state[index] = {
                "step": int(tensors[f"{name}.step"].item()),
                "exp_avg": tensors[f"{name}.exp_avg"],
                "exp_avg_sq": tensors[f"{name}.exp_avg_sq"],
            }


def _load_single_file_sharded(run, path: Path) -> dict:
    """A one-process checkpoint resumed by several: every rank reads the whole files and keeps its shard."""
    files = {
        "": ("model", "optimizer", "scheduler"),
        "critic_": ("critic", "critic_optimizer", "critic_scheduler"),
    }
    for prefix, (model, optimizer, scheduler) in _trained(run).items():
        model_file, optimizer_file, scheduler_file = files[prefix]
        full = ckpt.read_state(path, model_file)
        own = model.state_dict()
        model.load_state_dict({name: _as_like(own[name], tensor) for name, tensor in full.items()})
        saved = ckpt.read_state(path, optimizer_file)
        optimizer.load_state_dict(
            {
                "param_groups": saved["param_groups"],
                "state": {
                    int(i): {
                        "step": s["step"],
                        "exp_avg": _as_like(optimizer.params[int(i)], s["exp_avg"]),
                        "exp_avg_sq": _as_like(optimizer.params[int(i)], s["exp_avg_sq"]),
                    }
                    for i, s in saved["state"].items()
                },
            }
        )
        if scheduler is not None:
            scheduler.load_state_dict(ckpt.read_state(path, scheduler_file))
    return ckpt.read_state(path, "extra_state")


def _as_like(target: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``target``: this rank's shard of it when ``target`` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        full = full.to(device=target.device, dtype=target.dtype)
        return distribute_tensor(full, target.device_mesh, target.placements)
    return full


# ---------------------------------------------------------------------------------------------- export
def export(run, out_dir: Path) -> Path:
    """The policy as one Hugging Face directory (safetensors). Several processes: the full state dict is
    gathered to rank 0, loaded into the unsharded rollout copy, and written by rank 0."""
    if run.world.size == 1:
        return ckpt.export_hf(run.policy, run.tokenizer, out_dir)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(run.policy, options=options)  # a collective; the tensors land on rank 0
    if run.world.is_main:
        model = run.rollout_model
        model.load_state_dict(full)
        ckpt.export_hf(model, run.tokenizer, out_dir)
    run.world.barrier()
    return out_dir
