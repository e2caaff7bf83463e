"""glibc's malloc set up for a long-running threaded server.  glibc gives each new thread its own memory arena, up
to 8 per core; every arena keeps the high-water mark of the requests it served, so a server whose worker threads
each once decoded a large upload holds that peak many times over (RSS rising in steps for an hour).  Two arenas
bound that, at a cost in lock contention that a 2-core Space does not notice (BENCHMARKS.md: soak)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
SERVER_ARENAS = 2


def limit_malloc_arenas(count: int = SERVER_ARENAS) -> bool:
    """At most `count` arenas for the threads that start from now on; True if set.  Not on a non-glibc libc, and
    not when MALLOC_ARENA_MAX is set (the person's choice wins)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
