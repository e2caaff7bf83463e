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


def common_split_seed(training_args: dict[str, dict], requested: int | None = None) -> int | None:
    """The split seed that members (name -> their training_args.json) were trained on, which their evaluation must
    use: validated and calibrated on another split, a member is scored on images it trained on.

    Runs from before `split_seed` was an option split by `seed`. Members without training args (a foreign timm
    folder) say nothing. Raises DataError when the members' splits differ, or `requested` differs from theirs;
    returns `requested` when no member says (None when neither does).
    """
    seeds = {name: args.get("split_seed", args.get("seed")) for name, args in training_args.items()}
    known = {name: seed for name, seed in seeds.items() if seed is not None}
    if len(set(known.values())) > 1:
        raise DataError("the members were trained on different train/val splits ("
                        + ", ".join(f"{name}: split seed {seed}" for name, seed in known.items())
                        + "), so each has trained on images another is validated on: train them with the same "
                          "--split-seed")
    if known and requested is not None and requested not in known.values():
        raise DataError(f"--split-seed {requested}, but the members were trained on split seed "
                        f"{next(iter(known.values()))}: evaluated on another split, their validation images "
                        "include ones they trained on")
    return next(iter(known.values()), requested)


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
