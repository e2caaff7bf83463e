"""Cache build speed and memory on a folder of photos, beside one pass of torchvision's ImageFolder.

    python benchmarks/cache_build.py --generate 5000 --photos /work/photos-bench   # once, slow (1 process)
    python benchmarks/cache_build.py --photos /work/photos-bench --cache-size 256

Generated photos are 2-12 MP JPEGs (quality 90) of smooth random content with a little sensor-like noise,
so their file sizes and decode costs are close to a phone's.  Each measurement runs in a fresh subprocess;
its peak memory is the PSS summed over its processes (pages shared by forked workers counted once), sampled
every 0.1 s with psutil.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)


def generate_photos(folder: Path, count: int, classes: int = 10, seed: int = 0) -> None:
    """`count` JPEGs of 2-12 MP in folder/train/class_k/, skipping files already written (resumable)."""
    rng = np.random.default_rng(seed)
    noise = Image.effect_noise((4900, 4900), 6).convert("RGB")  # one tile, cropped at random per photo
    for i in range(count):
        megapixels, aspect = rng.uniform(2, 12), ASPECTS[rng.integers(len(ASPECTS))]
        coarse, fine = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        dx, dy = rng.integers(0, 256, 2)
        path = folder / "train" / f"class_{i % classes}" / f"photo_{i:05d}.jpg"
        if path.exists():
            continue
        w = int(round((megapixels * 1e6 * aspect) ** 0.5))
        h = int(round(megapixels * 1e6 / w))
        small = (w // 8, h // 8)  # smooth content mixed at 1/8 scale, then one upscale
        content = Image.blend(Image.fromarray(coarse).resize(small, Image.BICUBIC),
                              Image.fromarray(fine).resize(small, Image.BILINEAR), 0.25).resize((w, h), Image.BILINEAR)
        photo = ImageChops.add(content, noise.crop((dx, dy, dx + w, dy + h)), scale=1.0, offset=-128)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        photo.save(tmp, "JPEG", quality=90)
        tmp.rename(path)
        if i % 100 == 0:
            print(f"{i}/{count} {w}x{h} {path.stat().st_size / 1e6:.1f} MB", flush=True)


OURS = """
import sys, time
sys.path.insert(0, {repo!r})
from vision_ensemble.data import prepare_cache
start = time.perf_counter()
prepare_cache({photos!r}, {cache_root!r}, {cache_size})
print("SECONDS", time.perf_counter() - start)
"""

TORCHVISION = """
import itertools, sys, time
import torch
from torchvision import datasets, transforms
dataset = datasets.ImageFolder({photos!r} + "/train", transforms.Compose(
    [transforms.Resize({cache_size}), transforms.CenterCrop({cache_size}), transforms.PILToTensor()]))
if {limit}:
    dataset = torch.utils.data.Subset(dataset, range(min({limit}, len(dataset))))
start = time.perf_counter()
for images, labels in torch.utils.data.DataLoader(dataset, batch_size=64, num_workers={workers}):
    pass
print("SECONDS", time.perf_counter() - start, "IMAGES", len(dataset))
"""


def run_measured(code: str) -> tuple[str, float]:
    """Run `code` in a fresh interpreter; return its stdout and the peak of its total PSS (all its processes)."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    parent, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            # PSS: pages shared by the forked workers are counted once, not once per process.
            rss = sum(p.memory_full_info().pss for p in [parent, *parent.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
        peak = max(peak, rss)
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"benchmark subprocess failed ({proc.returncode})")
    return out, peak


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, default=Path("/work/photos-bench"), help="image-folder tree (train/<class>/)")
    p.add_argument("--generate", type=int, metavar="N", help="first write N photos into --photos (resumable)")
    p.add_argument("--cache-size", type=int, default=256)
    p.add_argument("--cache-root", type=Path, default=Path("/tmp/cache-build-bench"), help="emptied first")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torchvision baseline")
    p.add_argument("--baseline-limit", type=int, default=0, help="time the baseline on only this many photos")
    args = p.parse_args()
    if args.generate:
        generate_photos(args.photos, args.generate)
    import shutil

    shutil.rmtree(args.cache_root, ignore_errors=True)
    count = sum(1 for _ in (args.photos / "train").rglob("*.jpg"))
    megapixels = np.mean([np.prod(Image.open(f).size) / 1e6 for f in sorted((args.photos / "train").rglob("*.jpg"))[::50]])
    print(f"{count} photos, {megapixels:.1f} MP on average; cache size {args.cache_size}; {os.cpu_count()} CPU cores")
    repo = str(Path(__file__).resolve().parents[1])
    out, ours_rss = run_measured(OURS.format(repo=repo, photos=str(args.photos), cache_root=str(args.cache_root),
                                             cache_size=args.cache_size))
    ours_s = float(out.split("SECONDS")[1].split()[0])
    out, base_rss = run_measured(TORCHVISION.format(photos=str(args.photos), cache_size=args.cache_size,
                                                    limit=args.baseline_limit, workers=args.workers))
    base_s, base_n = float(out.split("SECONDS")[1].split()[0]), int(out.split("IMAGES")[1].split()[0])
    print(f"{'':<44}{'images/s':>10}{'peak PSS (all processes)':>28}")
    print(f"{'vision_ensemble cache build (all cores)':<44}{count / ours_s:>10.1f}{ours_rss / 2**30:>24.2f} GiB")
    print(f"{f'torchvision ImageFolder, {args.workers} workers ({base_n} imgs)':<44}{base_n / base_s:>10.1f}"
          f"{base_rss / 2**30:>24.2f} GiB")


if __name__ == "__main__":
    main()
