"""`vision-ensemble predict` on this machine: images/s against decoding alone, and peak memory against file count.

    python benchmarks/batch_predict.py --manifest models/cifar10 --photos 200 --small 2000 --rss-counts 1000 20000

1. Rate: for CIFAR-10's own 32x32 JPEGs (`--small` of them, from the test split) and for 12-MP JPEGs (`--photos`
   copies of one 4000x3000 photo-like JPEG), the same DataLoader workers, batches and batch size decode the
   files to the ensemble's source_size with and without the ensemble after them, `--rounds` times in turn (the
   median is reported: timings on a shared CPU move between runs), predicting with each `--threads` count for
   the networks (the decoding workers take the cores too): predicting should cost little beside decoding (goal:
   >= 80% of the decode-only rate for the 12-MP JPEGs). Beside them, the prediction alone on the same batches
   decoded beforehand, and the ceiling the two rates set.
2. Memory: the real command (`python -m vision_ensemble.serving.batch`) on folders of each `--rss-counts` files
   (hard links of the same few), its process tree sampled every 50 ms: peak PSS of the tree (each shared page
   counted once, shared among the processes mapping it: forked workers share most of the main process's pages,
   which a sum of RSS counts again for each) and the main process's peak USS (its own pages). Streaming in
   batches should make 20,000 files cost no more than 1,000 (the same --batch-size in every run).
Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import psutil
import torch
from PIL import Image

from vision_ensemble.serving.batch import Classifier, list_inputs
from vision_ensemble.serving.predict import predict_batch


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
        count = sum(len(indices) + len(errors)
                    for indices, _, errors in classifier.decoding_loader(inputs, workers=workers))
    return count / (time.perf_counter() - start)


def network_rate(classifier: Classifier, folder: Path, workers: int) -> float:
    """Images/s of the prediction alone (`predict_batch`, the command's), on the files' batches decoded beforehand."""
    batches = [batch for _, batch, _ in classifier.decoding_loader(list_inputs(str(folder)), workers=workers)]
    start = time.perf_counter()
    count = sum(len(predict_batch(classifier.ensemble, batch)) for batch in batches)
    return count / (time.perf_counter() - start)


def peak_memory_mb(command: list[str]) -> tuple[float, float, float]:
    """(peak PSS of the process and its children, peak USS of the process, in MB; seconds) of `command`."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent, peak_pss, peak_uss = psutil.Process(process.pid), 0, 0
    while process.poll() is None:
        try:
            peak_uss = max(peak_uss, parent.memory_full_info().uss)
            tree = [parent] + parent.children(recursive=True)
            peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"{command} failed ({process.returncode})")
    return peak_pss / 2**20, peak_uss / 2**20, time.perf_counter() - start


def cifar_test_jpegs(archive: Path, out: Path, count: int = 64) -> list[Path]:
    """The first `count` test images of the CIFAR-10 archive, as the files they are there."""
    files = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and "/test/" in member.name and member.name.endswith(".jpg"):
                files.append(out / f"cifar{len(files)}.jpg")
                files[-1].write_bytes(tar.extractfile(member).read())
                if len(files) == count:
                    return files
    raise SystemExit(f"{archive}: fewer than {count} test images")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default="models/cifar10")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"))
    p.add_argument("--small", type=int, default=2000, help="CIFAR-10 test JPEGs (32x32) for the rate")
    p.add_argument("--photos", type=int, default=200, help="12-MP JPEGs for the rate")
    p.add_argument("--rss-counts", type=int, nargs="+", default=[1000, 20000])
    p.add_argument("--rss-batch-size", type=int, default=256, help="the command's --batch-size in every memory run "
                   "(auto would size it from the file count, which the runs compare)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count(), 1],
                   help="the networks' CPU threads (`vision-ensemble predict --threads`): one predict rate each")
    p.add_argument("--also-no-tta", action="store_true", help="one more predict rate: the first --threads count "
                   "without flip TTA (`--no-tta`: half the network work)")
    p.add_argument("--runtime", default="onnx", choices=("onnx", "torch"))
    p.add_argument("--rounds", type=int, default=3, help="decode-only and predict runs, in turn, per file kind")
    args = p.parse_args()

    variants = [(threads, None) for threads in args.threads] + ([(args.threads[0], False)] if args.also_no_tta else [])
    classifiers = {(threads, tta): Classifier.load(args.manifest, args.runtime, tta, threads)
                   for threads, tta in variants}
    classifier = classifiers[variants[0]]
    with tempfile.TemporaryDirectory(prefix="batch-predict-") as tmp:
        tmp = Path(tmp)
        small = cifar_test_jpegs(Path(args.data_dir), tmp)
        jpeg = photo_jpeg(tmp / "photo.jpg")
        rows = []
        for name, originals, count in (("CIFAR-10 JPEG (32x32)", small, args.small),
                                       (f"12-MP JPEG (4000x3000, {jpeg.stat().st_size / 1e6:.1f} MB)", [jpeg],
                                        args.photos)):
            folder = make_folder(tmp / name.split()[0], originals, count)
            rate(classifier, folder, args.workers, predict=False)  # warm: page cache, worker start-up
            decoded, predicted = [], {variant: [] for variant in variants}
            for _ in range(args.rounds):
                decoded.append(rate(classifier, folder, args.workers, predict=False))
                for (threads, tta), each in classifiers.items():
                    torch.set_num_threads(threads)  # as the command's --threads: the preprocessing's too
                    predicted[threads, tta].append(rate(each, folder, args.workers, predict=True))
            torch.set_num_threads(args.threads[0])
            rows.append((name, count, classifier.auto_batch_size(count, args.workers), statistics.median(decoded),
                         network_rate(classifier, folder, args.workers),
                         {variant: statistics.median(r) for variant, r in predicted.items()}))
        memory = []
        for count in args.rss_counts:
            folder = make_folder(tmp / f"rss{count}", small, count)
            out = tmp / f"rss{count}.csv"
            pss, uss, seconds = peak_memory_mb([
                sys.executable, "-m", "vision_ensemble.serving.batch", str(folder), "--manifest", args.manifest,
                "--output", str(out), "--runtime", args.runtime, "--workers", str(args.workers),
                "--batch-size", str(args.rss_batch_size)])
            memory.append((count, pss, uss, seconds, sum(1 for _ in out.open()) - 1))

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.runtime} runtime, {args.workers} decoding workers, {args.manifest} "
          f"({len(classifier.ensemble.members)} member(s), source size {classifier.ensemble.source_size[0]} px)\n")
    print(f"| files | count | batch | decode only (img/s) | predict only, {args.threads[0]} thread(s) (img/s) | "
          "ceiling: predict / decode if both shared the cores perfectly | "
          + " | ".join(f"decode + predict, {t} network thread(s){', no TTA' if tta is False else ''} (img/s) | "
                       "predict / decode" for t, tta in variants) + " |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(variants))
    for name, count, batch, decode_only, network, predicted in rows:
        print(f"| {name} | {count:,} | {batch} | {decode_only:.0f} | {network:.0f} | "
              f"{network / (network + decode_only):.0%} | "
              + " | ".join(f"{predicted[v]:.0f} | {predicted[v] / decode_only:.0%}" for v in variants) + " |")
    print(f"(medians of {args.rounds} rounds; the ceiling: an image costs 1/decode + 1/predict seconds of the whole "
          "machine, so decode + predict can reach at most predict / (decode + predict) of the decode-only rate)")
    print("\n| files | batch | peak PSS (process + workers) | peak USS (main process) | wall | rows written |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count, pss, uss, seconds, written in memory:
        print(f"| {count:,} | {args.rss_batch_size} | {pss:.0f} MB | {uss:.0f} MB | {seconds:.1f} s | {written:,} |")


if __name__ == "__main__":
    main()
