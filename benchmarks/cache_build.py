"""Cache build speed and memory on a folder of photos, beside one pass of torchvision's ImageFolder.

    python benchmarks/cache_build.py --generate 5000 --photos /work/photos-bench   # once, slow (1 process)
    python benchmarks/cache_build.py --photos /work/photos-bench --cache-size 256

Generated photos are 2-12 MP JPEGs (quality 90) of smooth random content with a little sensor-like noise,
so their file sizes and decode costs are close to a phone's.  Each measurement runs in a fresh subprocess so
its peak RSS (resource.getrusage, children included) is its own.
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
