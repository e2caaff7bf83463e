"""Photo-sized data: a generated folder of mixed sizes and formats through the parallel, memory-mapped,
resumable cache; 2-process training in both memory modes; Hugging Face datasets as a source."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from vision_ensemble.data import DataError, load_dataset, prepare_cache, scan_image_folder
from vision_ensemble.images import load_rgb

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
CLASSES = ("cats", "dogs", "ferns")
LARGE = [(4000, 3000), (3000, 4000), (2592, 1456), (1456, 2592), (3264, 2448)]  # width, height


def smooth_photo(rng, width, height) -> Image.Image:
    coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """~240 images, 100x80 to 4000x3000, mixed aspect ratios and formats, with one file of each awkward kind."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 66), ("test", 14)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = int(rng.integers(100, 480)), int(rng.integers(80, 480))
                smooth_photo(rng, w, h).save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}", quality=90)
    special = root / "train" / "cats"
    for i, (w, h) in enumerate(LARGE):
        smooth_photo(rng, w, h).save(special / f"large_{i}.jpg", quality=90)
    smooth_photo(rng, 300, 200).convert("CMYK").save(special / "cmyk.jpg")
    smooth_photo(rng, 200, 160).convert("L").save(special / "gray.png")
    Image.fromarray(np.full((120, 100), 32768, np.uint16)).save(special / "sixteen_bit.png")  # mid-grey in 16 bit
    # Stored landscape, shown portrait (EXIF orientation 6 = rotate 90 degrees clockwise): red above, blue below.
    shown = np.zeros((300, 200, 3), np.uint8)
    shown[:150, :, 0], shown[150:, :, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90).save(special / "rotated.jpg", exif=exif, quality=95)
    (special / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def cached_row(cache_dir, split_dir, name):
    paths, _, _ = scan_image_folder(split_dir)
    return np.load(cache_dir / "train_images.npy", mmap_mode="r")[[p.name for p in paths].index(name)]


def test_photo_cache_is_square_capped_rotated_and_lists_unreadable_files(photo_folder, tmp_path):
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data = load_dataset(photo_folder, cache_root=tmp_path, val_size=0.1, cache_size=64)
    meta = json.loads((data.cache_dir / "meta.json").read_text())
    assert meta["image_size"] == [64, 64] and meta["cache_size"] == 64 and "64px" in data.cache_dir.name
    assert meta["skipped"] == 1 and meta["skipped_files"][0].endswith("corrupt.jpg")
    assert isinstance(data.train.pixels, np.memmap) and data.train.image_shape == (64, 64, 3)
    assert len(data.train) + len(data.val) == 3 * 66 + len(LARGE) + 5 - 1 and len(data.test) == 3 * 14

    cats = photo_folder / "train" / "cats"
    rotated = cached_row(data.cache_dir, photo_folder / "train", "rotated.jpg").astype(int)
    assert rotated[:24, :, 0].mean() > 200 and rotated[:24, :, 2].mean() < 50  # red on top: rotation applied
    assert rotated[-24:, :, 2].mean() > 200 and rotated[-24:, :, 0].mean() < 50
    grey = cached_row(data.cache_dir, photo_folder / "train", "sixteen_bit.png")
    assert np.all(np.abs(grey.astype(int) - 128) <= 1)  # scaled from 16 bits, not clipped to white
    gray = cached_row(data.cache_dir, photo_folder / "train", "gray.png")
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    # A 4000x3000 JPEG decoded in draft mode (1/8 scale) and resized stays close to the full-size decode.
    large = cached_row(data.cache_dir, photo_folder / "train", "large_0.jpg").astype(float)
    full = Image.fromarray(load_rgb(cats / "large_0.jpg")).resize((85, 64), Image.BICUBIC).crop((10, 0, 74, 64))
    assert np.abs(large - np.asarray(full, float)).mean() < 3
    cmyk = cached_row(data.cache_dir, photo_folder / "train", "cmyk.jpg").astype(float)
    expected = Image.open(cats / "cmyk.jpg").convert("RGB").resize((96, 64), Image.BICUBIC).crop((16, 0, 80, 64))
    assert np.abs(cmyk - np.asarray(expected, float)).mean() < 2


BUILD = ("import json, resource, sys; from vision_ensemble.data import prepare_cache; "
         "prepare_cache(sys.argv[1], sys.argv[2], 64); "
         "print(json.dumps({'self': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "'children': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def one_cpu():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one decode worker: the build takes long enough to kill


@pytest.mark.slow
def test_killed_cache_build_is_finished_by_resuming_and_equals_a_clean_build(photo_folder, tmp_path):
    clean = subprocess.run([sys.executable, "-c", BUILD, str(photo_folder), str(tmp_path / "clean")], env=ENV,
                           cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    peak_kib = json.loads(clean.stdout.strip().splitlines()[-1])
    assert max(peak_kib.values()) < 2 * 1024**2  # main process and the largest worker each under 2 GB

    build = subprocess.Popen([sys.executable, "-c", BUILD, str(photo_folder), str(tmp_path / "killed")], env=ENV,
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=one_cpu)
    deadline, done = time.monotonic() + 240, 0
    while time.monotonic() < deadline and build.poll() is None:
        status_files = list((tmp_path / "killed").glob("*/train_status.npy"))
        try:
            done = int((np.load(status_files[0]) > 0).sum()) if status_files else 0
        except (EOFError, ValueError):  # caught between the file's creation and its first write
            done = 0
        if done:
            os.killpg(build.pid, signal.SIGKILL)  # the build and its worker, mid-way
            break
        time.sleep(0.005)
    build.wait()
    assert build.returncode == -signal.SIGKILL and 0 < done < 3 * 66 + len(LARGE) + 5
    (cache_dir,) = [p for p in (tmp_path / "killed").iterdir() if p.is_dir()]  # beside it: its lock file
    assert not (cache_dir / "meta.json").exists()  # never used half-done

    resumed = subprocess.run([sys.executable, "-c", BUILD, str(photo_folder), str(tmp_path / "killed")], env=ENV,
                             cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    assert "resuming an interrupted cache build" in resumed.stdout
    already = int(resumed.stdout.split("build in")[1].split(":")[1].split("of")[0].replace(",", ""))
    assert already >= done > 0  # the images decoded before the kill were not decoded again
    clean_dir = tmp_path / "clean" / cache_dir.name
    for name in ("train_images", "train_labels", "train_status", "test_images", "test_labels", "test_status"):
        np.testing.assert_array_equal(np.load(cache_dir / f"{name}.npy"), np.load(clean_dir / f"{name}.npy"))
    assert json.loads((cache_dir / "meta.json").read_text()) == json.loads((clean_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def trained_runs(photo_folder, tmp_path_factory):
    """One 2-process epoch per memory mode, sharing one cache; then both best/ folders evaluated together."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for mode in ("device", "stream"):
        out = root / mode
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train" / "finetune.py"),
               "--model", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "1",
               "--data-dir", str(photo_folder), "--cache-dir", str(root / "cache"), "--output-dir", str(out),
               "--val-size", "21", "--data-mode", mode, "--num-workers", "1"]
        result = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"data on {mode}" in result.stdout
        runs[mode] = out
    evaluated = subprocess.run([sys.executable, str(REPO / "evaluation" / "evaluate.py"), "--models",
                                *(str(out / "best") for out in runs.values()), "--data-dir", str(photo_folder),
                                "--cache-dir", str(root / "cache"), "--output-dir", str(root / "results")],
                               env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["device", "stream"])
def test_two_process_photo_run_trains_exports_and_evaluates(trained_runs, mode):
    out = trained_runs[mode]
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["val_count"] == 21  # 21 val images over 2 processes: each counted once
    assert json.loads((out / "best" / "config.json").read_text())["label_names"] == list(CLASSES)
    report = json.loads((out.parent / "results" / "report.json").read_text())
    assert report["test_images"] == 3 * 14 and report["class_names"] == list(CLASSES)
    assert str(out / "best") in [m["source"] for m in report["members"]]
    caches = [p for p in (out.parent / "cache").iterdir() if p.is_dir() and not p.name.startswith("datacheck-")]
    assert len(caches) == 1  # evaluation reused training's cache (beside it: the data check's report)


# --- Hugging Face datasets --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar_subset(cifar10_archive, tmp_path_factory):
    """The first 20 test images of CIFAR-10's first 3 classes, as an image folder and as `datasets` exports
    (parquet files and a save_to_disk folder): 12 per class as train, 8 as test."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("cifar_subset")
    classes, found = ["airplane", "automobile", "bird"], {}
    with tarfile.open(cifar10_archive) as tf:
        for member in tf:
            parts = member.name.split("/")
            if member.isfile() and parts[1:2] == ["test"] and parts[2] in classes and len(found.get(parts[2], [])) < 20:
                found.setdefault(parts[2], []).append(tf.extractfile(member).read())
            if sum(map(len, found.values())) == 60:
                break
    columns = {"train": {"img": [], "label": []}, "test": {"img": [], "label": []}}
    for label, name in enumerate(classes):
        for i, data in enumerate(found[name]):
            split = "train" if i < 12 else "test"
            (root / "folder" / split / name).mkdir(parents=True, exist_ok=True)
            (root / "folder" / split / name / f"{i:02d}.jpg").write_bytes(data)
            columns[split]["img"].append({"bytes": data, "path": None})
            columns[split]["label"].append(label)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    hf = datasets.DatasetDict({split: datasets.Dataset.from_dict(c, features=features) for split, c in columns.items()})
    hf.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    for split, ds in hf.items():
        ds.to_parquet(str(root / "parquet" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("source", ["saved", "parquet", "parquet/*.parquet"])
def test_hf_dataset_gives_the_same_pixels_and_labels_as_the_folder(cifar_subset, tmp_path, source):
    folder = load_dataset(cifar_subset / "folder", cache_root=tmp_path, val_size=6)
    hf = load_dataset(str(cifar_subset / source), cache_root=tmp_path, val_size=6)
    assert hf.class_names == folder.class_names == ["airplane", "automobile", "bird"]
    assert hf.cache_dir != folder.cache_dir
    if source == "parquet/*.parquet":  # one glob: everything is train, test comes from nowhere
        assert hf.test is None and len(hf.train) + len(hf.val) == 60
        return
    for split in ("train", "val", "test"):
        ours, theirs = getattr(folder, split), getattr(hf, split)
        np.testing.assert_array_equal(theirs.images, ours.images)
        np.testing.assert_array_equal(theirs.labels, ours.labels)


def test_hf_dataset_without_an_image_column_lists_the_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"pixels": [b"x"], "target": [0]}).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(DataError, match="its columns are pixels, target"):
        prepare_cache(tmp_path / "odd", tmp_path / "cache")


@pytest.mark.slow
def test_hub_dataset_id_offline_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "train/finetune.py", "--data-dir", "uoft-cs/cifar10", "--cache-dir",
                             str(tmp_path), "--output-dir", str(tmp_path / "run")],
                            env={**ENV, "HF_DATASETS_CACHE": str(tmp_path / "hf")}, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "could not load the Hub dataset uoft-cs/cifar10" in result.stderr and "pass a local copy" in result.stderr
