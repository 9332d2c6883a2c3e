"""How the C allocator hands memory to the proxy's body buffers.

A proxied body is sent in pieces of whatever has arrived, up to 1 MiB. glibc
serves such a piece from an mmap at first and then, adjusting its threshold,
from the heap; the heap's top is given back to the system whenever more than
twice the largest piece is free there, and taken again, page by page, for the
next response. With 16 large responses in flight that was about 200 page
faults a 1 MiB response, a quarter of its CPU (`make bench` (g), minor faults
from /proc/<pid>/stat). Fixed thresholds keep large pieces on the heap and
its top in the process, to be reused: memory stays at what the busiest
moment needed (bounded by the connections in flight times 1 MiB) instead of
going back and forth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 16 << 20  # pieces smaller than this come from the heap
TRIM_THRESHOLD = 64 << 20  # free memory kept at the heap's top


def tune_malloc() -> bool:
    """Set the thresholds where the C library is glibc; False elsewhere
    (musl, macOS), where nothing is changed."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
