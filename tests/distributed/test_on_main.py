"""`World.on_main` under a real gloo group of 2 processes whose collective time-out (4 s) is shorter than
rank 0's work: the other rank gets the result instead of timing out, and an error rank 0 raises (one that
cannot be pickled, too) is raised on both ranks."""

import threading
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp

from sapo.distributed.world import World


class UnpicklableError(Exception):
    def __init__(self):
        super().__init__("the scorer's lock is held")
        self.lock = threading.Lock()  # locks cannot be pickled


def slow_work():
    time.sleep(8)  # twice the group's 4 s time-out
    return {"path": "/models/warm"}


def failing_work():
    raise UnpicklableError()


def rank_main(rank, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=4)
    )
    world = World(rank=rank, size=2)
    lines = [repr(world.on_main(slow_work))]
    try:
        world.on_main(failing_work)
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        lines.append(f"{type(exc).__name__}: {exc}")
    (out_dir / f"rank{rank}.txt").write_text("\n".join(lines))
    dist.destroy_process_group()


def test_rank_0_work_outlasts_the_time_out_and_its_errors_reach_every_rank(tmp_path):
    mp.spawn(rank_main, args=(str(tmp_path / "init"), tmp_path), nprocs=2, join=True)
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1))
    assert rank0[0] == rank1[0] == "{'path': '/models/warm'}"
    assert rank0[1] == "UnpicklableError: the scorer's lock is held"  # rank 0 keeps its own exception
    assert rank1[1] == "RuntimeError: UnpicklableError on rank 0: the scorer's lock is held"
