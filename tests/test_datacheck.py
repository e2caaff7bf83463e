"""The data check on a dirty generated folder (hidden folders, broken files, copies across splits, a missing
class), the multi-index near-duplicate search against brute force, and `--strict-data` refusing leakage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ENV, FINETUNE, REPO, run_in_process
from vision_ensemble.data import load_dataset
from vision_ensemble.data.check import check_data, leakage, near_pairs

CLASSES = ("apple", "pear", "plum")


def smooth_image(rng: np.random.Generator, size=(48, 64)) -> Image.Image:
    """Low-frequency random colours: every image different to a perceptual hash, as photos are."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size[::-1], Image.BICUBIC)


@pytest.fixture(scope="module")
def dirty_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dirty") / "fruit"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("test", 3)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            if split == "test" and name == "plum":
                continue  # a class with no test images
            for i in range(per_class * (3 if name == "apple" and split == "train" else 1)):
                smooth_image(rng).save(root / split / name / f"{i:03d}.png")
    train = root / "train"
    (train / ".ipynb_checkpoints").mkdir()  # Jupyter's, beside the classes: must not become a class
    shutil.copy(train / "pear" / "000.png", train / ".ipynb_checkpoints" / "000-checkpoint.png")
    (train / "apple" / ".ipynb_checkpoints").mkdir()
    shutil.copy(train / "apple" / "001.png", train / "apple" / ".ipynb_checkpoints" / "001-checkpoint.png")
    (train / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (train / "apple" / "._001.png").write_bytes(b"\0\5\26\7")  # macOS resource fork beside a real image
    (train / "pear" / "empty.jpg").write_bytes(b"")
    (train / "pear" / "notes.txt").write_text("picked in May")
    (train / "pear" / "fake.jpg").write_text("not a jpeg")
    data = (train / "plum" / "000.png").read_bytes()
    (train / "plum" / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("1", (8000, 5001)).save(train / "plum" / "huge.png")  # 40.0 M pixels: over the limit
    shutil.copy(train / "pear" / "003.png", root / "test" / "pear" / "leaked.png")  # exact copy across splits
    Image.open(train / "apple" / "005.png").resize((80, 60)).save(root / "test" / "apple" / "resized.jpg", quality=90)
    shutil.copy(train / "apple" / "002.png", train / "pear" / "mislabelled-copy.png")  # same image, two labels
    return root


@pytest.fixture(scope="module")
def checked(dirty_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report, written = check_data(dirty_folder, out, cache_size=64)
    return report, written, out


def test_counts_missing_classes_and_imbalance(checked):
    report, _, _ = checked
    assert report["class_names"] == list(CLASSES)
    assert report["counts"]["train"] == {"apple": 24, "pear": 9, "plum": 8}  # pear: 8 + the mislabelled copy
    assert report["counts"]["test"] == {"apple": 4, "pear": 4, "plum": 0}
    assert report["missing"] == {"train": [], "test": ["plum"]}
    assert report["imbalance_ratio"] == 3.0


def test_every_left_out_file_is_reported_with_its_reason(checked, dirty_folder):
    report, _, _ = checked
    reasons = {Path(s["file"]).relative_to(dirty_folder).as_posix(): s["reason"].split(" (")[0]
               for s in report["skipped"]}
    assert reasons == {
        "train/.ipynb_checkpoints": "hidden folder", "train/.DS_Store": "hidden file",
        "train/apple/.ipynb_checkpoints": "hidden folder", "train/apple/._001.png": "hidden file",
        "train/pear/empty.jpg": "zero-byte file", "train/pear/notes.txt": "not an image",
        "train/pear/fake.jpg": "not an image", "train/plum/truncated.png": "unreadable",
        "train/plum/huge.png": "too many pixels"}


def test_duplicates_within_and_across_splits(checked):
    report, _, _ = checked
    pairs = report["duplicates"]["pairs"]
    names = {(Path(p["a"]).name, Path(p["b"]).name): p for p in pairs}
    leaked = names[("003.png", "leaked.png")]
    assert leaked["kind"] == "train-test" and leaked["exact"]
    resized = names[("005.png", "resized.jpg")]
    assert resized["kind"] == "train-test" and not resized["exact"] and resized["distance"] <= 4
    relabelled = names[("002.png", "mislabelled-copy.png")]
    assert relabelled["kind"] == "train" and relabelled["exact"] and relabelled["labels_differ"]
    assert pairs[0]["kind"] == "train-test" and len(pairs) == 3  # worst first; the other images are all different
    assert leakage(report) == {"train-test": 2}


def test_report_files_and_the_cache_agree_with_the_check(checked, dirty_folder, tmp_path):
    report, written, out = checked
    assert {p.name for p in written} == {"datacheck.json", "datacheck.html", "duplicates.png", "image_sizes.png"}
    saved = json.loads((out / "datacheck.json").read_text())
    assert saved["counts"] == report["counts"]
    assert saved["cache"] == {"cache_size": 64, "image_size": [48, 64], "resized": 0}
    assert "leaked.png" in (out / "datacheck.html").read_text()
    assert Image.open(out / "duplicates.png").size[1] > 200
    data = load_dataset(dirty_folder, tmp_path / "cache", cache_size=64)  # the cache takes the same images
    assert data.class_names == list(CLASSES) and data.skipped == 4  # zero-byte, fake, truncated, huge
    assert len(data.train) + len(data.val) == 41 and len(data.test) == 8
    assert sorted(Path(f).name for f in data.test.files())[:2] == ["000.png", "000.png"]


@pytest.mark.slow
def test_command_line_prints_the_table_and_strict_training_refuses_leakage(dirty_folder, tmp_path):
    result = subprocess.run([sys.executable, "-m", "vision_ensemble.datacheck", str(dirty_folder), "--output-dir",
                             str(tmp_path / "check")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["class", "train", "test"] and lines[1].split() == ["apple", "24", "4"]
    assert "warning: no test images of plum" in result.stdout
    assert "train-test (LEAKAGE) 1 exact, 1 near" in result.stdout
    result = run_in_process(FINETUNE, "--model", "test_resnet", "--img-size", "32", "--data-dir", dirty_folder,
                            "--cache-dir", tmp_path / "cache", "--output-dir", tmp_path / "run", "--strict-data",
                            check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the same images are in two splits (2 duplicate pairs across train-test; see ")
    assert "duplicates: train-test (LEAKAGE) 1 exact, 1 near" in result.stdout  # the short form came first
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_near_pairs_finds_exactly_what_brute_force_finds():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (300, 6)).astype(np.uint64)
    near = base.copy()
    for k in range(6):  # copies 0-6 bits away from their originals
        near[k::7] ^= np.bitwise_or.reduce(flips[k::7, :k], axis=1) if k else np.uint64(0)
    hashes = np.concatenate([base, near[::2]])
    i, j, d = near_pairs(hashes, 4)
    all_i, all_j = np.triu_indices(len(hashes), 1)
    distance = np.bitwise_count(hashes[all_i] ^ hashes[all_j])
    keep = distance <= 4
    assert sorted(zip(i.tolist(), j.tolist(), d.tolist())) == sorted(
        zip(all_i[keep].tolist(), all_j[keep].tolist(), distance[keep].tolist()))
    assert keep.sum() >= 80
