"""serving/allocator.py: a server's threads share at most two malloc arenas (counted in glibc's malloc_info), and a
MALLOC_ARENA_MAX the person set is left alone; freed large blocks go back at once; a trim hands back the rest."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

from conftest import ENV, REPO

# Eight threads alive at once, each allocating through malloc (bytearrays this large skip Python's small-object
# allocator), then glibc's own account of its arenas: one <heap nr=...> element per arena.
THREADS = """
import ctypes, re, sys, threading
from vision_ensemble.serving.allocator import limit_malloc_arenas
print("set" if limit_malloc_arenas() else "not set")
barrier = threading.Barrier(8)
def work():
    buffers = [bytearray(200_000) for _ in range(4)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
f = libc.fopen(sys.argv[1].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))
print(len(re.findall(r"<heap nr=", open(sys.argv[1]).read())), "arenas")
"""


def arenas(**env: str) -> tuple[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".xml") as info:
        out = subprocess.run([sys.executable, "-c", THREADS, info.name], env={**ENV, **env}, cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    return out[0], int(out[1].split()[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_threads_share_at_most_two_arenas_unless_the_person_chose():
    assert arenas() == ("set", 2)
    said, count = arenas(MALLOC_ARENA_MAX="6")  # the person's setting wins, and glibc applies it
    assert said == "not set" and count == 6


RSS_ANON_MB = """
def rss_anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
"""


# 200 MB in 1 KB blocks (through malloc), all but every 64th freed: the heap's top stays in use, so free() alone
# returns nothing; malloc_trim hands the whole free pages between the survivors back.
FRAGMENTED = RSS_ANON_MB + """
from vision_ensemble.serving.allocator import release_free_memory
blocks = [bytearray(1024) for _ in range(200_000)]
survivors = blocks[::64]
del blocks
before = rss_anon_mb()
release_free_memory()
print(before, rss_anon_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_trim_hands_back_the_free_pages_between_live_blocks():
    before, after = map(int, subprocess.run([sys.executable, "-c", FRAGMENTED], env=ENV, cwd=REPO, capture_output=True,
                                            text=True, timeout=60, check=True).stdout.split())
    assert before - after > 150, (before, after)  # of the ~200 MB freed


# After one freed 8 MB block glibc's dynamic threshold serves 4 MB blocks from the heap: 160 MB of them, freed below
# small survivors, stay in RSS (measured: 161 MiB).  With the threshold fixed they are mmapped and go at free().
LARGE_FREED = RSS_ANON_MB + """
import sys
from vision_ensemble.serving.allocator import fix_mmap_threshold
said = fix_mmap_threshold() if sys.argv[1] == "fixed" else False
big = bytearray(8 << 20)
del big
before = rss_anon_mb()
survivors, temporaries = [], []
for _ in range(40):
    temporaries.append(bytearray(4 << 20))
    survivors.append(bytearray(2000))
del temporaries
print("set" if said else "unset", rss_anon_mb() - before)
"""


def held_after_freeing_large_blocks(mode: str, **env: str) -> tuple[str, int]:
    said, held = subprocess.run([sys.executable, "-c", LARGE_FREED, mode], env={**ENV, **env}, cwd=REPO,
                                capture_output=True, text=True, timeout=60, check=True).stdout.split()
    return said, int(held)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_large_blocks_go_back_at_once_with_the_threshold_fixed():
    said, held = held_after_freeing_large_blocks("fixed")
    assert said == "set" and held < 20, held
    assert held_after_freeing_large_blocks("dynamic")[1] > 100  # glibc's default keeps them: the test can fail
    said, held = held_after_freeing_large_blocks("fixed", MALLOC_MMAP_THRESHOLD_="16777216")  # the person's choice
    assert said == "unset" and held > 100


# A million small dicts (pymalloc's size), one in 500 kept: in pymalloc every 1 MiB arena keeps a survivor and stays
# (measured: 215 of 223 MB), in malloc the trim hands back every page without one.  The script first restarts itself
# as the server does, so what it prints is what a server started with the same environment gets.
SMALL_OBJECTS = RSS_ANON_MB + """
import gc, os
from vision_ensemble.serving.allocator import release_free_memory, restart_with_objects_in_malloc
restart_with_objects_in_malloc()
base = rss_anon_mb()
objects = [{"i": i} for i in range(1_000_000)]
survivors = objects[::500]
peak = rss_anon_mb()
del objects
gc.collect()
release_free_memory()
print(os.environ.get("PYTHONMALLOC"), os.getpid(), peak - base, rss_anon_mb() - base)
"""


def small_objects_held(**env: str) -> tuple[str, int, int]:
    process = subprocess.Popen([sys.executable, "-c", SMALL_OBJECTS], env={**ENV, **env}, cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=60)
    allocator, pid, peak, held = out.split()
    assert int(pid) == process.pid  # exec: the same process, started again
    return allocator, int(peak), int(held)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_python_objects_in_malloc_go_back_when_freed_between_survivors():
    allocator, peak, held = small_objects_held()
    assert allocator == "malloc" and peak > 150 and held < peak / 5, (allocator, peak, held)
    allocator, peak, held = small_objects_held(PYTHONMALLOC="pymalloc")  # the person's choice wins
    assert allocator == "pymalloc" and held > peak / 2, (allocator, peak, held)  # pymalloc keeps them: it can fail
