import subprocess
import sys

import pytest

# One freed 1 MiB block raises glibc's mmap threshold past 1 MiB; then 200 x 1 MiB blocks interleaved with
# small live ones are freed. Resident memory retained afterwards is printed in MiB.
PROBE = """
import sys, torch
from sapo.trainer.host_memory import return_freed_memory_to_os
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
if sys.argv[1] == "on":
    assert return_freed_memory_to_os()
t = torch.ones(256 * 1024); del t
base = rss()
big, small = [], []
for _ in range(200):
    big.append(torch.ones(256 * 1024))
    small.append(torch.ones(4 * 1024))
del big
print(rss() - base)
"""


def _retained_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_go_back_to_the_os():
    assert _retained_mib("off") > 150  # glibc's default keeps the freed 200 MiB resident
    assert _retained_mib("on") < 30
