"""Keep the training process's resident memory close to what it actually holds (glibc allocator tuning).

Why: glibc's malloc serves a large request from a fresh ``mmap`` only until the first such block is freed;
then it raises its mmap threshold to that block's size (up to 32 MiB), so later activation tensors of a few
MiB come from the main heap, where freed blocks stay resident and fragment. On the tiny-model benchmark
this left the resident set ~250 MiB above the live tensors after a few actor updates. Fixing the threshold
(``mallopt(M_MMAP_THRESHOLD, 1 MiB)``) keeps every allocation of 1 MiB or more in its own mapping that is
returned to the system when the tensor is freed. Small allocations are unaffected.

Only glibc (Linux) has ``mallopt``; elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
DEFAULT_MMAP_THRESHOLD = 1 << 20  # bytes


def use_mmap_for_large_allocations(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``threshold`` bytes or more with their own mapping, freed back to the system
    (module docstring). Returns whether the allocator accepted the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
