"""Host memory: freed blocks stay in the process instead of going back to the kernel.

glibc's malloc serves a block above its mmap threshold (128 KiB at first, rising with the blocks
freed up to 32 MiB) with a new mapping, which it unmaps when the block is freed, and it gives the
top of its heap back to the kernel once more than the trim threshold (twice the mmap threshold)
is free there. Every page of such a block is then faulted in and zeroed again at its next
allocation. A PC update allocates and frees the same large maps at each inference step: on the
CIFAR-10 CNN (``specs/cifar10_cnn.yaml``, batch 128) that was 75-160 thousand page faults and
0.24-0.76 s of system time per update on a 2-core machine, and without them the update took 18%
less time (BP's 20%; ``docs/benchmarks.md``). Raising both thresholds to their limit keeps the
freed blocks for reuse: the process's resident memory stays at its peak instead of shrinking.
"""

from __future__ import annotations

import ctypes
import os
import sys

LIMIT = 2**31 - 1  # mallopt takes a C int: blocks above 2 GiB are still mapped and unmapped
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
# glibc reads these at a process's start: processes started from this one (spawned training
# workers, DataLoader workers) keep the setting too
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(LIMIT), "MALLOC_TRIM_THRESHOLD_": str(LIMIT)}


def keep_freed_memory() -> bool:
    """Keep the host memory that tensors free in this process, for the next allocations, and in
    the processes it starts (glibc's ``mallopt`` with ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` at their limit, and their environment variables set).

    ``pcgraph``'s commands call it at their start. Returns whether it applied: ``False``, doing
    nothing, where the C library is not glibc or where ``PCGRAPH_KEEP_FREED_MEMORY=0`` opts out."""
    if not sys.platform.startswith("linux") or os.environ.get("PCGRAPH_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
    except (OSError, AttributeError):
        return False
    if not (libc.mallopt(_M_MMAP_THRESHOLD, LIMIT) and libc.mallopt(_M_TRIM_THRESHOLD, LIMIT)):
        return False
    os.environ.update(ENVIRONMENT)
    return True
