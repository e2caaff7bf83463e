"""glibc's malloc set up for a long-running threaded server.  glibc gives each new thread its own memory arena, up
to 8 per core, and every arena keeps the high-water mark of the requests it served; and freed memory between
blocks still in use stays in the process (RSS) until `malloc_trim` hands its whole pages back; and after freeing one
large block glibc serves blocks up to that size (up to 32 MB) from the heap instead of mmap, so a burst of freed
uploads and arrays stays there; and Python's own allocator for small objects gives a 1 MiB arena back only when
every object in it is gone.  Python's objects in malloc, two arenas, a fixed mmap threshold and a trim every minute
keep a Space's memory flat over weeks (BENCHMARKS.md: soak)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import time
from functools import cache

M_ARENA_MAX = -8  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
SERVER_ARENAS = 2
SERVER_MMAP_THRESHOLD = 1 << 20  # blocks from 1 MiB (a decoded photo, a batch) get their own pages, freed at once
TRIM_EVERY_S = 60


@cache  # find_library searches the system's libraries: once, not on every trim
def _glibc():
    """The C library if it is glibc (it has malloc_trim), else None (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (an AttributeError outside glibc)
        return libc
    except (OSError, AttributeError):
        return None


def _mallopt(parameter: int, value: int, unless_set: str) -> bool:
    """glibc's `mallopt(parameter, value)`; True if set.  Not outside glibc, and not when the environment variable
    `unless_set` (glibc's own name for the same setting) is set: the person's choice wins."""
    libc = _glibc()
    if libc is None or os.environ.get(unless_set):
        return False
    return bool(libc.mallopt(parameter, value))


def restart_with_objects_in_malloc() -> None:
    """Start this process again (exec: same pid, arguments and environment) with PYTHONMALLOC=malloc, so Python's
    small objects live in malloc's heaps, whose free pages the trim hands back page by page, not in pymalloc's arenas,
    which stay while one object in them lives (measured: 215 of 223 MB kept against 8).  Python reads the setting only
    at start-up: call this first, before the heavy imports.  Not outside glibc, and not when PYTHONMALLOC is set."""
    if _glibc() is None or "PYTHONMALLOC" in os.environ or not sys.executable:
        return
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "PYTHONMALLOC": "malloc"})


def limit_malloc_arenas(count: int = SERVER_ARENAS) -> bool:
    """At most `count` arenas for the threads that start from now on; True if set.  Not outside glibc, and not when
    MALLOC_ARENA_MAX is set (the person's choice wins)."""
    return _mallopt(M_ARENA_MAX, count, unless_set="MALLOC_ARENA_MAX")


def fix_mmap_threshold(size: int = SERVER_MMAP_THRESHOLD) -> bool:
    """Blocks of `size` bytes or more come from mmap and go back to the kernel when freed, whatever was freed before
    (setting it stops glibc's dynamic threshold); True if set.  Not outside glibc, and not when
    MALLOC_MMAP_THRESHOLD_ is set."""
    return _mallopt(M_MMAP_THRESHOLD, size, unless_set="MALLOC_MMAP_THRESHOLD_")


def release_free_memory() -> bool:
    """Hand the whole free pages inside malloc's heaps back to the kernel (`malloc_trim(0)`); True if any went."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def trim_periodically(every_s: float = TRIM_EVERY_S) -> threading.Thread | None:
    """A daemon thread calling `release_free_memory` every `every_s` seconds (None outside glibc)."""
    if _glibc() is None:
        return None

    def loop():
        while True:
            time.sleep(every_s)
            release_free_memory()

    thread = threading.Thread(target=loop, name="malloc-trim", daemon=True)
    thread.start()
    return thread
