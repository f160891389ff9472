"""glibc malloc bounds for the long-running daemon (issue 11): few arenas, freed memory given back.

glibc gives each thread that allocates an arena of its own (up to 8 per core), and an arena keeps the pages of what
was freed in it. The daemon's threads (the PortAudio callback, the event loop's default executor for disk reads,
fsyncs and the upload's file reads) each got one; after a visit they held about 1 MB of freed pages that nothing
used again (``python -m benchmarks.rss --visit 20 10``: idle after the visit about 1 MB above the visit).
glibc also raises its mmap and trim thresholds when a large block is freed (dynamic thresholds), after which blocks
of the upload's size (256 KiB reads) stay in the arena instead of going back to the kernel.

:func:`bound_malloc` sets ``M_ARENA_MAX`` (the same 2 as ``MALLOC_ARENA_MAX=2`` in the systemd unit, so the
benchmarks measure what the unit runs) and fixed mmap and trim thresholds (which turn the dynamic ones off). Only
the daemon calls it, before it starts any thread. On a C library without ``mallopt`` (musl) nothing changes.

:func:`give_back` (``malloc_trim(0)``) returns the free pages inside the arenas too, not only at their tops: the
daemon calls it after an upload pass that sent a visit, when the visit's and the upload's buffers are freed
(``python -m benchmarks.rss --visit 20 10``: about 0.4 MB of the idle daemon after a visit).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""``mallopt`` parameter numbers (glibc's ``malloc.h``)."""

ARENA_MAX = 2
"""Arenas in all: the main one and one the other threads share (the systemd unit's ``MALLOC_ARENA_MAX``)."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""Blocks of this many bytes and more are mapped on their own and unmapped when freed (glibc's initial value)."""
TRIM_THRESHOLD_BYTES = 128 * 1024
"""Free bytes at an arena's top beyond which glibc gives them back to the kernel (glibc's initial value)."""

BOUNDS = ((M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))

Mallopt = Callable[[int, int], int]
"""``mallopt(param, value)``: 1 when the C library took the setting, 0 when it refused it."""


def libc_mallopt() -> Mallopt | None:
    """The process's ``mallopt`` (glibc), or None when the C library has none."""
    libc = ctypes.CDLL(None)
    function = getattr(libc, "mallopt", None)
    if function is None:
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int)
    function.restype = ctypes.c_int
    mallopt: Mallopt = function
    return mallopt


Trim = Callable[[int], int]
"""``malloc_trim(pad)``: 1 when memory was given back to the kernel, 0 when there was none to give."""


def libc_malloc_trim() -> Trim | None:
    """The process's ``malloc_trim`` (glibc), or None when the C library has none."""
    function = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = (ctypes.c_size_t,)
    function.restype = ctypes.c_int
    trim: Trim = function
    return trim


def give_back(trim: Trim | None = None) -> bool:
    """Give the free pages of every malloc arena back to the kernel; True when some were given."""
    if trim is None:
        trim = libc_malloc_trim()
    return trim is not None and trim(0) == 1


def bound_malloc(mallopt: Mallopt | None = None) -> bool:
    """Apply :data:`BOUNDS` with ``mallopt`` (default: the C library's); True when every one was taken."""
    if mallopt is None:
        mallopt = libc_mallopt()
    if mallopt is None:
        log.debug("malloc bounds: the C library has no mallopt; left as they are")
        return False
    refused = [param for param, value in BOUNDS if mallopt(param, value) != 1]
    if refused:
        log.warning("malloc bounds: the C library refused mallopt parameters %s", refused)
    return not refused
