"""The process group a run trains in, and the few collectives the trainer needs.

One process (``WORLD_SIZE`` unset or 1) is a world of size 1: every collective below is the identity and no
process group exists, so the training loop calls the same functions whatever the world size.

Several processes (``torchrun``, or ``sapo train trainer.n_gpus_per_node=N``, which starts them itself) form
one ``torch.distributed`` group: ``gloo`` on CPU, ``nccl`` on GPU, with every collective bounded by
``actor_rollout_ref.nccl_timeout`` seconds, so a rank that dies makes the others fail instead of hang.

How work is split (docs/distributed.md): rank ``r`` of ``W`` takes the contiguous share
``[r * n / W, (r + 1) * n / W)`` of any ``n`` rows (:meth:`World.share`); results are gathered back in rank
order (:meth:`World.gather_rows`, :meth:`World.gather_objects`), which is the single-process order.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from sapo.distributed.env import env_int, launched_world_size
from sapo.errors import ConfigError, UserError


@dataclass
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this World created the process group (and destroys it in close())
    mesh: object | None = field(default=None, repr=False)  # the FSDP device mesh (1-D, or 2-D for HSDP)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, logs and writes shared files."""
        return self.rank == 0

    # ------------------------------------------------------------------------------ splitting work
    def share(self, n: int) -> range:
        """This rank's contiguous rows of ``n`` (the shares differ by at most one row)."""
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # ------------------------------------------------------------------------------ collectives
    def gather_rows(self, local: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
        """Concatenate every rank's ``local`` along dim 0 in rank order (shares may differ in rows, not in
        the other dimensions). ``counts``: every rank's row count, when the caller knows them already."""
        if self.size == 1:
            return local
        counts = counts or [int(c) for c in self.gather_objects(local.shape[0])]
        width = max(counts)
        padded = local.new_zeros((width, *local.shape[1:]), device=self._device())  # nccl: on the GPU
        padded[: local.shape[0]] = local
        out = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(out, padded)
        return torch.cat([part[:count] for part, count in zip(out, counts)]).to(local.device)

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def gather_lists(self, items: list) -> list:
        """Every rank's list, concatenated in rank order."""
        return [item for part in self.gather_objects(items) for item in part]

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key sums over ranks (every rank passes the same keys)."""
        if self.size == 1 or not values:
            return values
        keys = sorted(values)
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._device())
        dist.all_reduce(total)
        return dict(zip(keys, total.tolist()))

    def max(self, value: int) -> int:
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, work):
        """``work()`` run by rank 0 alone (a warm start, files written once), its result on every rank.

        The other ranks do not wait in one collective, which ``nccl_timeout`` would cut short when the work
        is long (a warm start on a slow machine): rank 0 runs the work in a thread and, every
        ``HEARTBEAT_S`` seconds, tells them whether it is done. An exception on rank 0 is raised on every
        rank (as a plain `RuntimeError` / `UserError` with its message when it cannot be pickled), so none
        waits for a result that never comes."""
        if self.size == 1:
            return work()
        outcome: dict = {}
        if self.is_main:
            thread = threading.Thread(target=_run_into, args=(work, outcome), daemon=True)
            thread.start()
            while True:
                thread.join(HEARTBEAT_S)
                if self.broadcast(not thread.is_alive()):
                    break
        else:
            while not self.broadcast(None):
                pass
        result, error = self.broadcast(_picklable(outcome.get("result"), outcome.get("error")))
        if error is not None:
            raise outcome.get("error", error)  # rank 0 raises its own exception, with its traceback
        return result

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


HEARTBEAT_S = 1.0  # how often rank 0 tells the others whether its own work (World.on_main) is done


def _run_into(work, outcome: dict) -> None:
    try:
        outcome["result"] = work()
    except BaseException as exc:  # noqa: BLE001 - handed to every rank and raised there
        outcome["error"] = exc


def _picklable(result, error):
    """``(result, error)`` as something ``broadcast_object_list`` can send: an error that cannot be
    pickled becomes one that can, with the same message."""
    try:
        pickle.dumps((result, error))
        return result, error
    except Exception:  # noqa: BLE001 - any pickling failure
        if error is None:
            raise
        kind = UserError if isinstance(error, UserError) else RuntimeError
        return None, kind(f"{type(error).__name__} on rank 0: {error}")


def init_world(device: torch.device, timeout_s: float, fsdp_size: int = -1) -> World:
    """The run's world: an existing process group (a script that called ``init_process_group`` itself),
    or one made from torchrun's environment, or a world of one process."""
    size = launched_world_size()
    if not dist.is_initialized() and size == 1:
        return World()
    owns = False
    if not dist.is_initialized():
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={size} is set but {', '.join(missing)} is not: start the processes with "
                "torchrun (or `sapo train trainer.n_gpus_per_node=N`), or unset WORLD_SIZE for one process"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(env_int("LOCAL_RANK", 0))
        timeout = timedelta(seconds=timeout_s)
        store = attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(
                backend, store=store, rank=env_int("RANK", 0), world_size=size, timeout=timeout
            )
        owns = True
    world = World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=env_int("LOCAL_RANK", dist.get_rank()),
        owns_group=owns,
    )
    world.mesh = _device_mesh(world, device, fsdp_size)
    return world


def attempt_store(timeout: timedelta):
    """The rendezvous store for this torchrun attempt, or None for ``init_process_group``'s own.

    torchrun (c10d rendezvous, torch >= 2.5) keeps ONE store server in its agent for all restart attempts
    and hands the workers no per-attempt prefix, so after ``--max-restarts`` a new rank can read the address
    a dead rank of the previous attempt published and fail to connect (pytorch#135712; seen here as gloo's
    "connectFullMesh failed ... Connection refused" in about one restart of three). On one node the agent's
    restart count is the attempt's number for every rank, so keys are prefixed with it. Across nodes the
    agents' counts can differ; there the launcher must be told not to share its store
    (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, docs/distributed.md), which gives each attempt a new one.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if env_int("GROUP_WORLD_SIZE", 1) > 1:
        if env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0 and env_int("RANK", 0) == 0:
            print(
                "warning: torchrun shares one rendezvous store across restarts, and a restarted rank may "
                "read a dead rank's address (pytorch#135712): export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                "before torchrun on every node",
                file=sys.stderr,
                flush=True,
            )
        return None
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"], env_int("MASTER_PORT", 0), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"sapo/attempt_{env_int('TORCHELASTIC_RESTART_COUNT', 0)}", client)


def _device_mesh(world: World, device: torch.device, fsdp_size: int):
    """1-D mesh over all ranks (FSDP), or ``(replicate, shard)`` with shard groups of ``fsdp_size`` (HSDP)."""
    from torch.distributed.device_mesh import init_device_mesh

    if fsdp_size in (-1, world.size):
        return init_device_mesh(device.type, (world.size,), mesh_dim_names=("shard",))
    if fsdp_size < 1 or world.size % fsdp_size:
        raise ConfigError(
            f"fsdp_config.fsdp_size={fsdp_size} does not divide the {world.size} processes: use -1 (shard "
            "over all of them) or a divisor of the world size"
        )
    shape = (world.size // fsdp_size, fsdp_size)
    return init_device_mesh(device.type, shape, mesh_dim_names=("replicate", "shard"))
