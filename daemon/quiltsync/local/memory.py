"""Give large freed buffers back to the system (glibc).

A push writes a manifest of about 270 bytes per file (13.5 MB for 50,000 files).
glibc serves such a buffer from mmap and returns it on free, but each free raises
its mmap threshold (up to 32 MB), so the next manifests come from the heap and stay
in the process's resident memory after they are freed: measured on a 50,000-file
folder, steady RSS 180 MB instead of 152 MB. Fixing the threshold (``mallopt``
M_MMAP_THRESHOLD, which also turns the raising off) keeps big buffers in mmap.
Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024  # glibc's default starting value


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
