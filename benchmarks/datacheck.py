"""Data check speed: images per second through `check_data` (read, content hash, decode, perceptual hash) on
generated web-sized JPEGs, and the near-duplicate search alone on 100,000 hashes.

    python benchmarks/datacheck.py --images 10000 --folder /tmp/datacheck-bench   # generates once (resumable)

The JPEGs are 400-640 px on the longer side (ImageNet's typical size), quality 90, smooth random content with
noise; 2% are re-encoded, resized copies of others in the test split (the leakage the check looks for).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vision_ensemble.data.check import check_data, near_pairs


def generate(folder: Path, count: int, classes: int = 10, seed: int = 0) -> None:
    for i in range(count):
        rng = np.random.default_rng([seed, i])  # per image: a resumed generation draws what it would have drawn
        split = "test" if i % 10 == 0 else "train"
        path = folder / split / f"class_{i % classes}" / f"img_{i:06d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        long_side = int(rng.integers(400, 641))
        size = (long_side, int(long_side * rng.uniform(0.6, 1.0)))
        if split == "test" and i % 50 == 0 and i > 50:  # a resized, re-encoded copy of a train image
            source = folder / "train" / f"class_{(i - 1) % classes}" / f"img_{i - 1:06d}.jpg"
            Image.open(source).resize(size).save(path.with_suffix(".partial"), "JPEG", quality=80)
            path.with_suffix(".partial").rename(path)
            continue
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.int16)
        noise = rng.normal(0, 6, image.shape).astype(np.int16)
        Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)).save(path.with_suffix(".partial"), "JPEG",
                                                                               quality=90)
        path.with_suffix(".partial").rename(path)  # a killed generation leaves no truncated JPEG behind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/datacheck-bench"))
    parser.add_argument("--hashes", type=int, default=100_000, help="hashes for the near-duplicate search alone")
    args = parser.parse_args()
    generate(args.folder, args.images)
    start, cpu = time.perf_counter(), os.times()
    report, _ = check_data(args.folder, args.folder.with_name(args.folder.name + "-report"))
    seconds, after = time.perf_counter() - start, os.times()
    # CPU seconds of this process and of the (joined) worker processes: what 2 idle cores would take, halved.
    cpu_s = sum(after[k] - cpu[k] for k in range(4))
    print(f"check_data: {args.images:,} JPEGs in {seconds:.1f} s wall = {args.images / seconds:.0f} images/s; "
          f"{cpu_s:.1f} CPU s = {cpu_s / args.images * 1e3:.2f} CPU ms per image; skipped {len(report['skipped'])}; "
          f"duplicates {report['duplicates']['counts']}")
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, args.hashes, dtype=np.uint64)
    copies = hashes[: args.hashes // 20] ^ (np.uint64(1) << rng.integers(0, 64, args.hashes // 20).astype(np.uint64))
    start, cpu = time.perf_counter(), time.process_time()
    i, _, _ = near_pairs(np.concatenate([hashes, copies]), 4)
    print(f"near_pairs: {len(hashes) + len(copies):,} hashes, {len(i):,} pairs within 4 bits in "
          f"{time.perf_counter() - start:.2f} s wall, {time.process_time() - cpu:.2f} CPU s")


if __name__ == "__main__":
    main()
