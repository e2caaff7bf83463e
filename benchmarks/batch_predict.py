"""`vision-ensemble predict` on this machine: images/s against decoding alone, and peak memory against file count.

    python benchmarks/batch_predict.py --manifest models/cifar10 --photos 200 --small 2000 --rss-counts 1000 20000

1. Rate: for CIFAR-size PNGs (`--small` of them, cut from the test split) and for 12-MP JPEGs (`--photos` copies
   of one 4000x3000 photo-like JPEG), the same DataLoader workers decode the files to the ensemble's
   source_size with and without the ensemble after them: predicting should cost little beside decoding
   (goal: >= 80% of the decode-only rate for the 12-MP JPEGs).
2. Memory: the real command (`python -m vision_ensemble.serving.batch`) on folders of each `--rss-counts` PNGs
   (hard links of the same few files), its process tree's peak RSS sampled every 50 ms: streaming in batches
   should make 20,000 files cost no more than 1,000.
Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import psutil
import torch
from PIL import Image

from vision_ensemble.data import load_dataset
from vision_ensemble.serving.batch import Classifier, DecodedInputs, collate, list_inputs


def photo_jpeg(path: Path, height: int = 3000, width: int = 4000) -> Path:
    """A photo-like 12-MP JPEG: smooth gradients with sensor-like noise (JPEG decode cost depends on content)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 200, yy / height * 200, (xx + yy) / (width + height) * 255], axis=-1)
    noise = rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def make_folder(root: Path, originals: list[Path], count: int) -> Path:
    """`count` files, hard links to `originals` in turn (the same bytes; the page cache keeps them warm)."""
    root.mkdir(parents=True)
    for i in range(count):
        source = originals[i % len(originals)]
        os.link(source, root / f"{i:06d}{source.suffix}")
    return root


def rate(classifier: Classifier, folder: Path, workers: int, predict: bool) -> float:
    """Images/s through the command's own DataLoader, with the ensemble (as `predict` runs) or without."""
    inputs = list_inputs(str(folder))
    start = time.perf_counter()
    if predict:
        count = sum(len(records) for records in classifier.predict_inputs(inputs, workers=workers))
    else:
        loader = torch.utils.data.DataLoader(DecodedInputs(inputs, classifier.ensemble.source_size),
                                             batch_size=classifier.auto_batch_size(), num_workers=workers,
                                             collate_fn=collate, prefetch_factor=2 if workers else None)
        count = sum(len(indices) + len(errors) for indices, _, errors in loader)
    return count / (time.perf_counter() - start)


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """(peak RSS of the process and its children in MB, seconds) of `command`, sampled every 50 ms."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [parent] + parent.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"{command} failed ({process.returncode})")
    return peak / 2**20, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default="models/cifar10")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"))
    p.add_argument("--small", type=int, default=2000, help="CIFAR-size PNGs for the rate")
    p.add_argument("--photos", type=int, default=200, help="12-MP JPEGs for the rate")
    p.add_argument("--rss-counts", type=int, nargs="+", default=[1000, 20000])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--runtime", default="onnx", choices=("onnx", "torch"))
    args = p.parse_args()

    classifier = Classifier.load(args.manifest, args.runtime)
    with tempfile.TemporaryDirectory(prefix="batch-predict-") as tmp:
        tmp = Path(tmp)
        test = load_dataset(args.data_dir).test
        pngs = []
        for i in range(64):  # 64 distinct test images as PNG files
            pngs.append(tmp / f"cifar{i}.png")
            Image.fromarray(test.gather(np.array([i]))[0]).save(pngs[-1])
        jpeg = photo_jpeg(tmp / "photo.jpg")
        rows = []
        for name, originals, count in (("CIFAR-size PNG (32x32)", pngs, args.small),
                                       ("12-MP JPEG (4000x3000, 2.4 MB)", [jpeg], args.photos)):
            folder = make_folder(tmp / name.split()[0], originals, count)
            rate(classifier, folder, args.workers, predict=False)  # warm: page cache, worker start-up
            decode_only = rate(classifier, folder, args.workers, predict=False)
            predicted = rate(classifier, folder, args.workers, predict=True)
            rows.append((name, count, decode_only, predicted))
        memory = []
        for count in args.rss_counts:
            folder = make_folder(tmp / f"rss{count}", pngs, count)
            out = tmp / f"rss{count}.csv"
            peak, seconds = peak_rss_mb([sys.executable, "-m", "vision_ensemble.serving.batch", str(folder),
                                         "--manifest", args.manifest, "--output", str(out), "--runtime", args.runtime,
                                         "--workers", str(args.workers)])
            memory.append((count, peak, seconds, sum(1 for _ in out.open()) - 1))

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.runtime} runtime, {args.workers} decoding workers, {args.manifest} "
          f"({len(classifier.ensemble.members)} member(s), source size {classifier.ensemble.source_size[0]} px)\n")
    print("| files | count | decode only (img/s) | decode + predict (img/s) | predict / decode |")
    print("|---|---:|---:|---:|---:|")
    for name, count, decode_only, predicted in rows:
        print(f"| {name} | {count:,} | {decode_only:.0f} | {predicted:.0f} | {predicted / decode_only:.0%} |")
    print("\n| files | peak RSS (process + workers) | wall | rows written |")
    print("|---:|---:|---:|---:|")
    for count, peak, seconds, written in memory:
        print(f"| {count:,} | {peak:.0f} MB | {seconds:.1f} s | {written:,} |")


if __name__ == "__main__":
    main()
