"""The Space's temp folder stays bounded (gradio 6.31; each found by benchmarks/soak.py).  Gradio's `delete_cache`
task iterates its sets of files while uploads add to them from the event loop: the first "Set changed size during
iteration" ends the task silently and files pile up from then on.  It also leaves the folder each upload was stored
in, and gr.File(type="filepath") leaves an empty `tmpXXXXXXXX` file in the cache root on every call.  One thread
here does the same deletion (retried on the next round when it meets that race) and removes both leftovers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def remove_empty_entries(root: str | Path, older_than_s: float) -> int:
    """Remove the empty folders and empty files directly under `root` unchanged for `older_than_s` seconds (Gradio
    keeps every real file one folder down); how many went."""
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            stat = entry.stat(follow_symlinks=False)
            if now - stat.st_mtime <= older_than_s:
                continue
            if entry.is_dir(follow_symlinks=False):
                os.rmdir(entry.path)  # fails unless empty, so a folder Gradio is writing into is never removed
                removed += 1
            elif entry.is_file(follow_symlinks=False) and stat.st_size == 0:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
    return removed


def sweep_temp_files(blocks, root: str | Path, every_s: float, older_than_s: float) -> threading.Thread:
    """A daemon thread that every `every_s` seconds deletes the files `blocks` created (uploads, results) older than
    `older_than_s`, as Gradio's delete_cache does, then `remove_empty_entries(root, older_than_s)`."""
    from gradio.route_utils import delete_files_created_by_app

    def loop():
        while True:
            time.sleep(every_s)
            try:
                delete_files_created_by_app(blocks, older_than_s)
            except RuntimeError:  # an upload changed a set during the iteration: the next round deletes the files
                pass
            remove_empty_entries(root, older_than_s)

    thread = threading.Thread(target=loop, name="sweep-temp-files", daemon=True)
    thread.start()
    return thread
