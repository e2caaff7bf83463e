"""The Space's temp folder stays bounded (gradio 6.31; each found by benchmarks/soak.py).  Gradio's `delete_cache`
task iterates its sets of files while uploads add to them from the event loop: under steady load nearly every round
meets "Set changed size during iteration", which ends it (and Gradio's task for good), so files pile up; it also
keeps the name of every file already gone.  It leaves the folder each upload was stored in, and
gr.File(type="filepath") leaves an empty `tmpXXXXXXXX` file in the cache root on every call.  One thread here
deletes the same files from a snapshot of each set, and removes both leftovers."""

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


def delete_old_app_files(blocks, older_than_s: float) -> int:
    """Delete the files `blocks` created (uploads, outputs) whose status changed over `older_than_s` seconds ago,
    except those a component keeps (`keep_in_cache`), as gradio.route_utils.delete_files_created_by_app does, but
    over a snapshot of each set (`list()` copies it without letting another thread run) so a request that adds a
    file meanwhile does not end the round; names of files already gone leave the set too.  How many went."""
    keep = set()
    for component in list(blocks.blocks.values()):
        keep.update(getattr(component, "keep_in_cache", ()))
    removed, now = 0, time.time()
    for files in blocks.temp_file_sets:
        for name in list(files):
            if name in keep:
                continue
            try:
                if now - os.lstat(name).st_ctime <= older_than_s:
                    continue
                os.remove(name)
                removed += 1
            except FileNotFoundError:
                pass
            files.discard(name)
    return removed


#: An empty entry this old is a leftover: Gradio writes a file into the folder it made within milliseconds.  (Not the
#: files' age: deleting its file resets a folder's clock, so folders then outlived their files by a whole age.)
EMPTY_ENTRY_GRACE_S = 60


def sweep_temp_files(blocks, root: str | Path, every_s: float, older_than_s: float) -> threading.Thread:
    """A daemon thread that every `every_s` seconds runs `delete_old_app_files(blocks, older_than_s)`, then
    `remove_empty_entries` for entries empty for EMPTY_ENTRY_GRACE_S (or `older_than_s` if shorter)."""

    def loop():
        while True:
            time.sleep(every_s)
            try:
                delete_old_app_files(blocks, older_than_s)
                remove_empty_entries(root, min(older_than_s, EMPTY_ENTRY_GRACE_S))
            except OSError:  # a disk error must not end the sweeping for good; the next round tries again
                pass

    thread = threading.Thread(target=loop, name="sweep-temp-files", daemon=True)
    thread.start()
    return thread
