"""The Space's temp-folder sweep: what Gradio leaves behind (empty folders, empty tmp files) goes, nothing else."""

from __future__ import annotations

import os
import time

from vision_ensemble.serving.tempfiles import remove_empty_entries


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
