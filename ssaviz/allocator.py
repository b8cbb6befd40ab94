"""Let the process re-use memory it frees instead of handing it back to the kernel at once.

glibc serves allocations over 128 KB with fresh pages from ``mmap`` and
unmaps them on ``free``, so every overlay, grid canvas and activation tensor
pays a page fault per 4 KB the first time it is written; on a small VM that
costs about as much as drawing an overlay. Raising glibc's mmap and trim
thresholds keeps freed blocks for the next request: the remedy PyTorch's CPU
performance guide gets from jemalloc or tcmalloc, with no new dependency
(docs/performance.md has the bench with and without it). The cost is that
the resident size stays near its high-water mark.
"""

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_done: dict[str, bool] = {}


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Apply the thresholds once per process; True if they are in effect.

    Skipped where it cannot apply (not glibc) or should not: ``SSAVIZ_MALLOC_TUNING=0``, or the
    user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``.
    """
    if "result" in _done:
        return _done["result"]
    ok = False
    if (sys.platform.startswith("linux") and os.environ.get("SSAVIZ_MALLOC_TUNING", "1") != "0"
            and not any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))):
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
            ok = False
        log.debug("malloc thresholds %s", "raised" if ok else "left as they were")
    _done["result"] = ok
    return ok
