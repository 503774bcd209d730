"""The checks that depend on the process count: ``trainer.nnodes x trainer.n_gpus_per_node`` against the
processes started, the per-process share of each mini-batch, and the ``fsdp_config`` sections (verl's keys).

``sapo train`` runs them with torchrun's ``WORLD_SIZE``; ``sapo config --world-size N`` with ``N`` (default:
the configured count), so a config can be checked for a cluster on a laptop.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from sapo.config.schema import Config
from sapo.errors import ConfigError


def configured_world_size(config: Config) -> int:
    """The processes the config asks for: ``trainer.nnodes x trainer.n_gpus_per_node``."""
    return config.trainer.nnodes * config.trainer.n_gpus_per_node


def check_world_size(config: Config, world_size: int) -> None:
    """A ConfigError when the process count (torchrun's ``WORLD_SIZE``, or ``sapo config --world-size``)
    and the config disagree. ``trainer.nnodes x trainer.n_gpus_per_node`` must equal it, except that both
    keys at 1 accept any count (a plain torchrun command line). ``sapo train`` and ``sapo config`` call this
    before :func:`validate`, which checks the per-process batch arithmetic for the same count."""
    trainer = config.trainer
    for key, value in (("nnodes", trainer.nnodes), ("n_gpus_per_node", trainer.n_gpus_per_node)):
        if value < 1:
            raise ConfigError(f"trainer.{key} must be >= 1 (got {value}); it counts processes, leave it at 1")
    if world_size < 1:
        raise ConfigError(f"the process count must be >= 1 (got {world_size}): omit --world-size")
    asked = configured_world_size(config)
    if asked not in (1, world_size):
        raise ConfigError(
            f"{world_size} processes were started but trainer.nnodes x trainer.n_gpus_per_node = "
            f"{trainer.nnodes} x {trainer.n_gpus_per_node} = {asked}: make them agree (torchrun "
            f"--nnodes {trainer.nnodes} --nproc_per_node {trainer.n_gpus_per_node}), or leave both keys at 1 "
            "under torchrun"
        )


def per_process_problems(prefix: str, mini: int, n: int, micro: int | None, world_size: int) -> list[str]:
    sequences = mini * n
    if sequences % world_size:
        return [
            f"{prefix}: a mini-batch of {mini} prompts x rollout.n={n} = {sequences} sequences cannot be "
            f"split evenly over {world_size} processes; make {prefix}.ppo_mini_batch_size x "
            f"actor_rollout_ref.rollout.n a multiple of {world_size}"
        ]
    per_rank = sequences // world_size
    if micro is None:
        return []
    if micro < 1:
        return [f"{prefix}.ppo_micro_batch_size_per_gpu must be >= 1 or null (got {micro})"]
    if per_rank % micro:
        return [
            f"{prefix}.ppo_micro_batch_size_per_gpu={micro} does not divide the per-process mini-batch: "
            f"ppo_mini_batch_size {mini} x n {n} / {world_size} processes = {per_rank} sequences; "
            f"use a divisor of {per_rank}, e.g. {divisors_hint(per_rank, micro)}"
        ]
    return []


HINT_WINDOW = 10_000  # divisors_hint searches near +- this many numbers


# sapo.models.dtypes' names (config does not import models); matched lower-case, as resolve_dtype does.
FSDP_DTYPES = ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32")
MIXED_PRECISION_KEYS = ("param_dtype", "reduce_dtype", "buffer_dtype")


def _fsdp_sections(config: Config) -> dict[str, Any]:
    arr = config.actor_rollout_ref
    return {
        "actor_rollout_ref.actor.fsdp_config": arr.actor.fsdp_config,
        "actor_rollout_ref.ref.fsdp_config": arr.ref.fsdp_config,
        "critic.model.fsdp_config": config.critic.model.fsdp_config,
    }


def _is_fsdp_dtype(value: Any) -> bool:
    return isinstance(value, str) and value.lower().removeprefix("torch.") in FSDP_DTYPES


def fsdp_problems(config: Config, world_size: int) -> list[str]:
    """fsdp_size must fit the world size; dtype names must be known; models that are built must share
    the actor's fsdp_size (one device mesh serves them all)."""
    out = []
    built = {
        "actor_rollout_ref.actor.fsdp_config": True,
        "actor_rollout_ref.ref.fsdp_config": uses_reference(config),
        "critic.model.fsdp_config": bool(config.critic.enable),
    }
    for prefix, fsdp in _fsdp_sections(config).items():
        size = fsdp.fsdp_size
        if size != -1 and (size < 1 or world_size % size):
            out.append(
                f"{prefix}.fsdp_size={size} must be -1 (shard over all {world_size} processes) or a divisor "
                f"of the world size {world_size} ({divisors_text(world_size)})"
            )
        for key, value in fsdp.mixed_precision.items():
            if key not in MIXED_PRECISION_KEYS:
                near = difflib.get_close_matches(str(key), MIXED_PRECISION_KEYS, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                out.append(
                    f"{prefix}.mixed_precision.{key} is not a mixed-precision key{hint}: use "
                    f"{', '.join(MIXED_PRECISION_KEYS)}, or mixed_precision={{}} for no mixed precision"
                )
            elif not _is_fsdp_dtype(value):
                out.append(
                    f"{prefix}.mixed_precision.{key}={value!r} is not a dtype: choose one of "
                    f"{', '.join(FSDP_DTYPES)} (or remove the key)"
                )
        if fsdp.model_dtype is not None and not _is_fsdp_dtype(fsdp.model_dtype):
            out.append(
                f"{prefix}.model_dtype={fsdp.model_dtype!r} is not a dtype: choose one of "
                f"{', '.join(FSDP_DTYPES)}, or null for actor_rollout_ref.model.dtype"
            )
    actor_size = config.actor_rollout_ref.actor.fsdp_config.fsdp_size
    for prefix, fsdp in list(_fsdp_sections(config).items())[1:]:
        if built[prefix] and fsdp.fsdp_size != actor_size:
            out.append(
                f"{prefix}.fsdp_size={fsdp.fsdp_size} differs from actor_rollout_ref.actor.fsdp_config."
                f"fsdp_size={actor_size}: the models share one device mesh, so set the same value"
            )
    return out


def uses_reference(config: Config) -> bool:
    return config.actor_rollout_ref.actor.use_kl_loss or config.algorithm.use_kl_in_reward


def divisors_hint(total: int, near: int) -> str:
    """The two divisors of ``total`` closest to ``near``. Only a window around ``near`` is searched (plus 1
    and ``total``), so a huge size (``data.train_batch_size=10**30``) gets its error at once instead of a
    loop over every number up to it."""
    window = range(max(1, near - HINT_WINDOW), min(total, near + HINT_WINDOW) + 1)
    divisors = {d for d in window if total % d == 0} | {1, total}
    divisors = sorted(divisors, key=lambda d: (abs(d - near), d))
    return " or ".join(str(d) for d in sorted(divisors[:2]))


def divisors_text(total: int) -> str:
    """``total``'s divisors, comma-separated. Trial division stops at ``HINT_WINDOW`` (the pairs found are
    listed, then "..."), so ``trainer.n_gpus_per_node=10**12`` gets its error at once."""
    root = math.isqrt(total)
    small = [d for d in range(1, min(root, HINT_WINDOW) + 1) if total % d == 0]
    found = sorted(set(small) | {total // d for d in small})
    return ", ".join(map(str, found)) + (", ..." if root > HINT_WINDOW else "")


def tensor_parallel_problems(config: Config, world_size: int) -> list[str]:
    """``rollout.tensor_model_parallel_size``: the vllm engine's TP groups are consecutive ranks of the
    world (as vLLM builds them under ``external_launcher``), so the size must divide the process count."""
    rollout = config.actor_rollout_ref.rollout
    tp = rollout.tensor_model_parallel_size
    key = "actor_rollout_ref.rollout.tensor_model_parallel_size"
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        return [f"{key}={tp!r} must be a positive integer (1: one engine per process)"]
    if tp == 1:
        return []
    if rollout.name != "vllm":
        return [
            f"{key}={tp} needs actor_rollout_ref.rollout.name=vllm (the {rollout.name!r} engine holds the "
            f"whole model on each process): set rollout.name=vllm, or {key}=1"
        ]
    if world_size % tp:
        return [
            f"{key}={tp} must divide the {world_size} processes (each group of {tp} consecutive ranks shares "
            f"one engine): use one of {divisors_text(world_size)}, or start a multiple of {tp} processes"
        ]
    return []
