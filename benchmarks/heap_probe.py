"""Run a Python script with a thread that records, every INTERVAL seconds, what its heap holds: to tell a leak
(memory in use grows) from the allocator keeping freed memory (RSS grows, memory in use does not).

    python benchmarks/heap_probe.py OUT.jsonl INTERVAL script.py [script arguments]

Each line of OUT.jsonl: seconds since start; glibc's `mallinfo2()` (`in_use`: bytes malloc has handed out and
not had back, small blocks and mmapped ones; `heap`: bytes of the arenas plus mmapped blocks, what malloc holds
from the kernel; `mmapped`: those blocks alone); Python's allocated blocks; pymalloc's own arenas (`pymalloc`:
objects of up to 512 bytes live in 1 MiB arenas that Python mmaps itself, outside mallinfo, and gives back only
when a whole arena is empty: `arenas_bytes` held, `allocated_bytes` in live blocks); the live objects gc tracks,
and the ten most common types.
benchmarks/soak.py starts the server through it with `--heap-probe`.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import runpy
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


PYMALLOC_FIELDS = {"arenas_bytes": re.compile(r"^\d+ arenas \* \d+ bytes/arena\s+=\s+([\d,]+)$", re.MULTILINE),
                   "allocated_bytes": re.compile(r"^# bytes in allocated blocks\s+=\s+([\d,]+)$", re.MULTILINE)}


def pymalloc_stats() -> dict:
    """pymalloc's arenas from `sys._debugmallocstats()`, which prints to the C stderr: fd 2 goes to a file for the
    call (the server's own stderr lines in those milliseconds go there too).  Empty under PYTHONMALLOC=malloc."""
    with tempfile.TemporaryFile("w+") as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read()
    found = {key: pattern.search(text) for key, pattern in PYMALLOC_FIELDS.items()}
    return {key: int(m.group(1).replace(",", "")) for key, m in found.items()} if all(found.values()) else {}


def heap_sample(libc, started: float) -> dict:
    info = libc.mallinfo2()
    objects = gc.get_objects()
    types = Counter(type(o).__name__ for o in objects)
    return {"s": round(time.time() - started, 1), "in_use": info.uordblks + info.hblkhd,
            "heap": info.arena + info.hblkhd, "mmapped": info.hblkhd, "python_blocks": sys.getallocatedblocks(),
            "pymalloc": pymalloc_stats(), "gc_objects": len(objects),
            "top_types": dict(types.most_common(10))}


def main() -> None:
    out, interval, script = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    started = time.time()

    def loop():
        with open(out, "a") as f:
            while True:
                f.write(json.dumps(heap_sample(libc, started)) + "\n")
                f.flush()
                time.sleep(interval)

    threading.Thread(target=loop, name="heap-probe", daemon=True).start()
    sys.argv = sys.argv[3:]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as `python script.py` would
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
