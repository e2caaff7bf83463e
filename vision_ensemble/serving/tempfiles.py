"""The Space's temp folders stay bounded: Gradio's `delete_cache` removes old uploads and results but leaves the
folder each one was stored in (one per distinct upload), so a Space that runs for weeks would collect them."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def remove_empty_folders(root: str | Path, older_than_s: float) -> int:
    """Remove the empty folders directly under `root` unchanged for `older_than_s` seconds; how many went."""
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                os.rmdir(entry.path)  # fails unless empty, so a folder Gradio is writing into is never removed
                removed += 1
        except OSError:
            pass
    return removed


def sweep_empty_folders(root: str | Path, every_s: float, older_than_s: float) -> threading.Thread:
    """A daemon thread running `remove_empty_folders(root, older_than_s)` every `every_s` seconds."""
    def loop():
        while True:
            time.sleep(every_s)
            remove_empty_folders(root, older_than_s)

    thread = threading.Thread(target=loop, name="sweep-empty-temp-folders", daemon=True)
    thread.start()
    return thread
