"""The Space's temp-folder sweep: what Gradio leaves behind (empty folders, empty tmp files) goes, nothing else."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from vision_ensemble.serving.tempfiles import delete_old_app_files, remove_empty_entries


def test_sweep_removes_only_old_empty_entries(tmp_path):
    old = time.time() - 3600
    (tmp_path / "emptied").mkdir()
    (tmp_path / "tmpabcdefgh").write_bytes(b"")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "upload.png").write_bytes(b"png")
    (tmp_path / "real.csv").write_bytes(b"a,b\n")
    for name in ("emptied", "tmpabcdefgh", "kept", "real.csv"):
        os.utime(tmp_path / name, (old, old))
    (tmp_path / "fresh").mkdir()
    assert remove_empty_entries(tmp_path, older_than_s=600) == 2
    assert sorted(os.listdir(tmp_path)) == ["fresh", "kept", "real.csv"]
    assert remove_empty_entries(tmp_path / "missing", 600) == 0


class FakeBlocks:
    """What delete_old_app_files reads of gr.Blocks: its components and its sets of created files."""

    def __init__(self, files: set[str], keep: set[str]):
        self.blocks = {1: type("Component", (), {"keep_in_cache": keep})()}
        self.temp_file_sets = [files]


def test_old_files_go_while_requests_add_files(tmp_path):
    names = []
    for i in range(3000):
        (tmp_path / f"{i}.png").write_bytes(b"x")
        names.append(str(tmp_path / f"{i}.png"))
    files = set(names) | {str(tmp_path / "gone.png")}  # a name whose file was deleted elsewhere
    blocks = FakeBlocks(files, keep={names[0]})
    time.sleep(0.05)
    stop, added = threading.Event(), []

    def requests():  # the event loop adding uploads while the sweep runs (Gradio's own sweep dies on this)
        while not stop.is_set():
            name = str(tmp_path / f"new-{len(added)}.png")
            Path(name).write_bytes(b"y")
            files.add(name)
            added.append(name)

    thread = threading.Thread(target=requests)
    thread.start()
    try:
        removed = delete_old_app_files(blocks, older_than_s=0.02)
    finally:
        stop.set()
        thread.join()
    assert added  # requests did run during the sweep
    assert removed >= 2999 and not any(Path(n).exists() for n in names[1:])
    assert Path(names[0]).exists()  # kept in cache (an example)
    assert str(tmp_path / "gone.png") not in files and names[0] in files
    assert set(added) - files <= {n for n in added if not Path(n).exists()}  # only files removed left the set
