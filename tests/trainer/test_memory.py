"""sapo.trainer.memory: a freed large tensor leaves the resident set once the mmap threshold is fixed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sapo

PROBE = """
import sys, torch
from sapo.trainer.memory import use_mmap_for_large_allocations
def rss_mib(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "tuned": assert use_mmap_for_large_allocations()
x = torch.ones(2**21); del x  # 8 MiB freed: untuned glibc raises its mmap threshold past 8 MiB
before = rss_mib()
y = torch.ones(2**20); z = torch.ones(16); del y  # 4 MiB freed below a live small block
print(round(rss_mib() - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_mmap_threshold_returns_freed_activations_to_the_system():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    env["PYTHONPATH"] = str(Path(sapo.__file__).parents[1])
    kept = {}
    for mode in ("default", "tuned"):
        run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        kept[mode] = int(run.stdout.split()[-1])  # MiB still resident after freeing the 4 MiB tensor
    assert kept == {"default": 4, "tuned": 0}
