"""Give freed tensor memory back to the operating system at once (glibc only).

glibc serves a large ``malloc`` with its own ``mmap`` (returned to the OS by ``free``) only above a
threshold that starts at 128 KiB and *rises* to the size of the largest block freed so far (up to
32 MiB). After the first training step has freed its activations, every later activation, KV cache and
gradient buffer comes from the heap, and a freed block below a live one stays resident: a training
process keeps the high-water mark of every phase (generation, log-probs, update) added together.
Fixing the mmap threshold (and the trim threshold) at 128 KiB keeps resident memory close to what is
live. Measured on the TRL comparison (docs/benchmarks.md): the peak RSS fell by about 70 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024


def return_freed_memory_to_os(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap and trim thresholds at ``threshold_bytes``; True when both were set, False where
    the C library is not glibc (macOS, musl), which is left as it is."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    done = mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, threshold_bytes) == 1
    if not done:
        log.debug("mallopt refused the thresholds; memory is left to the allocator's defaults")
    return done
