"""Photo training augmentation throughput (images/s): `PhotoTrainTransform` (Kornia, batched on the device)
versus timm's own per-image PIL training transform, on the same uint8 images.

    python benchmarks/augment_throughput.py --source-size 256 --size 224 --batch-size 64

Both do RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + flip, RandAugment (2 operations) or nothing,
normalisation and RandomErasing (p 0.25).  timm's runs in the calling process (one core; a DataLoader
spreads it over its workers), ours on `--device` as the training loop runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform

from vision_ensemble.data import PhotoTrainTransform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_s(fn, batch, steps: int, device: torch.device) -> float:
    fn(batch)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn(batch)
    sync(device)
    return steps * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-size", type=int, default=256, help="cached square image size")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (args.batch_size, args.source_size // 8, args.source_size // 8, 3), dtype=np.uint8)
    pil_images = [Image.fromarray(c).resize((args.source_size,) * 2, Image.BICUBIC) for c in coarse]
    batch = torch.from_numpy(np.stack([np.array(p) for p in pil_images])).permute(0, 3, 1, 2).to(device)

    print(f"{args.batch_size} images {args.source_size}x{args.source_size} -> {args.size}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    for policy, timm_aa in (("none", None), ("randaugment", "rand-m9-n2")):
        ours = PhotoTrainTransform((3, args.size, args.size), MEAN, STD, "bicubic", auto_augment=policy,
                                   magnitude=9, erase_prob=0.25)
        timm_tf = create_transform(args.size, is_training=True, interpolation="bicubic", auto_augment=timm_aa,
                                   mean=MEAN, std=STD, re_prob=0.25, color_jitter=None)
        theirs = images_per_s(lambda images: [timm_tf(p) for p in images], pil_images, max(1, args.steps // 2), device)
        mine = images_per_s(ours, batch, args.steps, device)
        print(f"policy {policy:12s}  Kornia batched: {mine:8.0f} img/s   timm PIL per image: {theirs:8.0f} img/s")


if __name__ == "__main__":
    main()
