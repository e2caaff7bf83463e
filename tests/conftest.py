"""Shared fixtures: the real CIFAR-10 archive (../shared/data, read-only) and small generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_ARCHIVE = Path(os.environ.get("CIFAR10_ARCHIVE", REPO.parent / "shared" / "data" / "cifar10.tar.gz"))


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    if not CIFAR10_ARCHIVE.exists():
        pytest.fail(f"CIFAR-10 archive not found at {CIFAR10_ARCHIVE} (set CIFAR10_ARCHIVE)")
    return CIFAR10_ARCHIVE


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One decoded-data cache for the whole session, so CIFAR-10 is decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def cifar10(cifar10_archive, cache_root):
    from vision_ensemble.data import load_dataset

    return load_dataset(cifar10_archive, cache_root=cache_root)


def make_image_folder(root: Path, classes=("circle", "square", "stripes"), per_class=12, size=(80, 100),
                      splits=("train", "test"), fmt="png", seed=0) -> Path:
    """An image-folder tree of `size` (height, width) images whose classes are visibly different."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                if c == 0:
                    mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
                elif c == 1:
                    mask = (abs(yy - h / 2) < h / 4) & (abs(xx - w / 2) < w / 4)
                else:
                    mask = (xx // 8) % 2 == 0
                img[mask] = rng.integers(180, 255, 3, dtype=np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.{fmt}")
    return root
