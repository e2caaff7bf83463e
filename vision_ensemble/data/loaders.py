"""Loaders: standard `DataLoader`s over whole-batch datasets (`__getitems__`), so Accelerate can shard them
and `gather_for_metrics` can de-duplicate.  `DeviceImageDataset` keeps the uint8 pixels on the accelerator
(a batch is one gather there); `MemmapImageDataset` gathers each batch from the memory-mapped cache in a
DataLoader worker (one sorted read per batch, no decoding), pinned and prefetched by the DataLoader.
With `with_indices` a batch also carries its samples' indices (a student looks its cached teacher targets up)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import DEFAULT_SEED
from .cache import ImageArrays

UPLOAD_BYTES = 256 * 1024**2  # host memory used at a time while copying a cache to the device


class DeviceImageDataset(torch.utils.data.Dataset):
    """uint8 NCHW images and labels held on one device; a batch is one gather there, no per-image work."""

    def __init__(self, arrays: ImageArrays, device: torch.device | str = "cpu", with_indices: bool = False):
        self.with_indices = with_indices
        h, w, c = arrays.image_shape
        self.images = torch.empty((len(arrays), c, h, w), dtype=torch.uint8, device=device)
        step = max(1, UPLOAD_BYTES // (h * w * c))
        for start in range(0, len(arrays), step):  # in chunks: host memory stays bounded
            chunk = torch.from_numpy(arrays.gather(np.arange(start, min(start + step, len(arrays)))))
            self.images[start:start + len(chunk)] = chunk.to(device).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(arrays.labels).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]):  # DataLoader's batched fetch
        index = torch.as_tensor(indices, device=self.images.device)
        return (self.images[index], self.labels[index]) + ((index,) if self.with_indices else ())


class MemmapImageDataset(torch.utils.data.Dataset):
    """uint8 NCHW batches read from the memory-mapped cache: for data larger than the device's memory."""

    def __init__(self, arrays: ImageArrays, with_indices: bool = False):
        self.arrays, self.with_indices = arrays, with_indices

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int):
        return tuple(part[0] for part in self.__getitems__([index]))

    def __getitems__(self, indices: list[int]):  # DataLoader's batched fetch: one read for the whole batch
        images = torch.from_numpy(self.arrays.gather(indices)).permute(0, 3, 1, 2)  # NCHW view, channels_last
        labels = torch.from_numpy(self.arrays.labels[indices])
        return (images, labels) + ((torch.as_tensor(indices),) if self.with_indices else ())


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Class-balanced sampling (`--sampler balanced`): an epoch is as many draws, with replacement, as there are
    images, every class equally likely (an image with probability 1 / (classes x its class's count)).  The draws
    come from a generator seeded by (seed, epoch), so every process draws the same order and Accelerate gives
    each its own shard of it (`BatchSamplerShard`); `set_epoch`, which Accelerate's loader forwards, moves on."""

    def __init__(self, labels: np.ndarray, seed: int = DEFAULT_SEED):
        labels = np.asarray(labels)
        weights = 1.0 / np.bincount(labels)[labels]
        self.probabilities = weights / weights.sum()
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.probabilities)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.choice(len(self), size=len(self), p=self.probabilities).tolist())


def _keep_batch(batch):
    return batch


def device_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, drop_last: bool = False,
                  seed: int = DEFAULT_SEED, num_workers: int = 0, pin_memory: bool = False,
                  sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
    """A standard DataLoader of whole batches (uint8 NCHW images, labels) from a dataset with `__getitems__`;
    `sampler` (e.g. `BalancedSampler`) replaces the shuffle."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, drop_last=drop_last,
                                       collate_fn=_keep_batch, generator=generator, num_workers=num_workers,
                                       pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                       prefetch_factor=2 if num_workers > 0 else None)


def stream_loader(arrays: ImageArrays, batch_size: int, shuffle: bool, drop_last: bool = False,
                  seed: int = DEFAULT_SEED, num_workers: int = 2, with_indices: bool = False,
                  sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
    """Batches gathered from the memory map by `num_workers` background workers, two batches ahead each,
    into pinned memory when CUDA is there."""
    return device_loader(MemmapImageDataset(arrays, with_indices), batch_size, shuffle, drop_last, seed, num_workers,
                         pin_memory=torch.cuda.is_available(), sampler=sampler)


def fits_on_device(arrays_bytes: int, device: torch.device) -> bool:
    """Keep decoded data on the device when it takes under a quarter of its memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return arrays_bytes < free / 4
    return arrays_bytes < 8 * 1024**3
