"""Starting the processes of a one-node run from inside ``sapo train`` (``trainer.n_gpus_per_node=N``
without torchrun), through ``torch.distributed.run``'s own launcher API (``elastic_launch``), not a shell.

The launcher does what ``torchrun --standalone --nproc_per_node N`` does: a local rendezvous on a free
port, one process per device with ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` set, ``OMP_NUM_THREADS=1``
unless set, and, when one process fails, every other one stopped; the failure comes back here as an error
naming the rank.
"""

from __future__ import annotations

import os
import shlex
import signal
import uuid
from collections.abc import Callable

from sapo.errors import UserError


def torchrun_command(nnodes: int, nproc_per_node: int, arguments: list[str]) -> str:
    """The command to run on every node of a multi-node job."""
    return (
        f"torchrun --nnodes {nnodes} --nproc_per_node {nproc_per_node} --node_rank <0..{nnodes - 1}> "
        f"--rdzv-backend c10d --rdzv-endpoint <HOST OF NODE 0>:29500 -m sapo train {shlex.join(arguments)}"
    )


def launch_local(nproc: int, entrypoint: Callable, *args, max_restarts: int = 0) -> None:
    """Run ``entrypoint(*args)`` in ``nproc`` processes on this machine; raise a UserError naming the
    failed rank(s) if any process fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N processes must not each take every core
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"sapo-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as failed:
        raise UserError(describe_failures(failed.failures)) from None


def describe_failures(failures: dict) -> str:
    """One line per failed rank: its exit status or signal."""
    lines = []
    for rank, failure in sorted(failures.items()):
        code = failure.exitcode
        if code is not None and code < 0:
            try:
                why = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                why = f"killed by signal {-code}"
        elif code == 2:
            why = "stopped with the error printed above (exit status 2)"
        else:
            why = f"exit status {code}"
        lines.append(f"rank {rank} failed: {why}")
    return "; ".join(lines) + "; the other processes were stopped (the last complete checkpoint is kept)"
