"""The train/val split: stratified by class, chosen by a seed, stored beside the cache so that training and
evaluation see the same images."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .sources import DataError


def stratified_split(labels: np.ndarray, val_size: float | int, seed: int) -> np.ndarray:
    """Sorted validation indices: the same share of every class, chosen by `seed`."""
    n = len(labels)
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise DataError(f"val_size={val_size} leaves no train or no val images out of {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Largest-remainder apportionment keeps the total exact and every class's share proportional.
    quota = counts * n_val / n
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n_val - take.sum()]] += 1
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(val))


def subset_indices(total: int, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of size n (None when n is None or covers everything)."""
    if n is None or n >= total:
        return None
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def load_split(cache_dir: Path, labels: np.ndarray, val_size: float | int, seed: int) -> tuple[np.ndarray, Path]:
    """Validation indices, read from (or first written to) a split file beside the cache."""
    split_file = cache_dir / f"split-seed{seed}-val{val_size:g}.json"
    if split_file.exists():
        saved = json.loads(split_file.read_text())
        if saved["num_train_images"] == len(labels):
            return np.asarray(saved["val_indices"], dtype=np.int64), split_file
    val = stratified_split(labels, val_size, seed)
    record = {"seed": seed, "val_size": val_size, "num_train_images": len(labels), "val_indices": val.tolist()}
    # Several processes may write the same record at once (each node's, or several jobs'): each through its own
    # temporary file, so the rename that publishes it is atomic.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record))
    os.replace(tmp, split_file)
    return val, split_file
