"""Run a Python script with a thread that records, every INTERVAL seconds, what its heap holds: to tell a leak
(memory in use grows) from the allocator keeping freed memory (RSS grows, memory in use does not).

    python benchmarks/heap_probe.py OUT.jsonl INTERVAL script.py [script arguments]

Each line of OUT.jsonl: seconds since start; glibc's `mallinfo2()` (`in_use`: bytes malloc has handed out and
not had back, small blocks and mmapped ones; `heap`: bytes of the arenas plus mmapped blocks, what malloc holds
from the kernel; `mmapped`: those blocks alone); Python's allocated blocks; the live objects gc tracks, and the
ten most common types.
benchmarks/soak.py starts the server through it with `--heap-probe`.
"""

from __future__ import annotations

import ctypes
import gc
import json
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_sample(libc, started: float) -> dict:
    info = libc.mallinfo2()
    objects = gc.get_objects()
    types = Counter(type(o).__name__ for o in objects)
    return {"s": round(time.time() - started, 1), "in_use": info.uordblks + info.hblkhd,
            "heap": info.arena + info.hblkhd, "mmapped": info.hblkhd, "python_blocks": sys.getallocatedblocks(), "gc_objects": len(objects),
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
