"""Loaders.  `DeviceImageDataset` keeps the uint8 pixels on the accelerator and returns whole batches with
one gather, through a standard `DataLoader` (so Accelerate can shard it and `gather_for_metrics` can
de-duplicate).  `StreamingImageFolder` is the path for data too large for memory: workers decode files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..config import DEFAULT_SEED
from ..images import ImageError, load_rgb
from .cache import ImageArrays, _resize_to, tree_root_of
from .sources import scan_image_folder
from .split import load_split


class DeviceImageDataset(torch.utils.data.Dataset):
    """uint8 NCHW images and labels held on one device; a batch is one gather there, no per-image work."""

    def __init__(self, arrays: ImageArrays, device: torch.device | str = "cpu"):
        self.images = torch.from_numpy(arrays.images).to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(arrays.labels).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]):  # DataLoader's batched fetch
        index = torch.as_tensor(indices, device=self.images.device)
        return self.images[index], self.labels[index]


def _keep_batch(batch):
    return batch


def device_loader(dataset: DeviceImageDataset, batch_size: int, shuffle: bool, drop_last: bool = False,
                  seed: int = DEFAULT_SEED) -> torch.utils.data.DataLoader:
    """A standard DataLoader over a DeviceImageDataset: batches of uint8 NCHW images and labels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                       collate_fn=_keep_batch, generator=generator)


class StreamingImageFolder(torch.utils.data.Dataset):
    """Files decoded by DataLoader workers to a fixed `load_size`: for data too large to keep decoded."""

    def __init__(self, paths: list[Path], labels: np.ndarray, load_size: tuple[int, int]):
        self.paths, self.labels, self.load_size = paths, labels, tuple(load_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = load_rgb(self.paths[index])
        except ImageError as exc:
            warnings.warn(f"{self.paths[index]}: {exc}; a black image stands in", stacklevel=2)
            image = np.zeros((*self.load_size, 3), dtype=np.uint8)
        if image.shape[:2] != self.load_size:
            image = _resize_to(image, self.load_size)
        return torch.from_numpy(image).permute(2, 0, 1), int(self.labels[index])


def streaming_splits(cache_dir: Path, val_size: float | int, seed: int) -> dict[str, StreamingImageFolder]:
    """Train/val/test StreamingImageFolders over the files behind a cache, with the cache's own split."""
    meta = json.loads((cache_dir / "meta.json").read_text())
    root = tree_root_of(cache_dir)
    size = tuple(meta["image_size"])
    paths, labels, classes = scan_image_folder(root / "train", meta["class_names"])
    out = {}
    if (root / "val").is_dir():
        out["train"] = StreamingImageFolder(paths, labels, size)
        out["val"] = StreamingImageFolder(*scan_image_folder(root / "val", classes)[:2], size)
    else:
        val_idx, _ = load_split(cache_dir, labels, val_size, seed)
        mask = np.zeros(len(labels), dtype=bool)
        mask[val_idx] = True
        out["train"] = StreamingImageFolder([p for p, m in zip(paths, mask) if not m], labels[~mask], size)
        out["val"] = StreamingImageFolder([p for p, m in zip(paths, mask) if m], labels[mask], size)
    if (root / "test").is_dir():
        out["test"] = StreamingImageFolder(*scan_image_folder(root / "test", classes)[:2], size)
    return out


def fits_on_device(arrays_bytes: int, device: torch.device) -> bool:
    """Keep decoded data on the device when it takes under a quarter of its memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return arrays_bytes < free / 4
    return arrays_bytes < 8 * 1024**3
