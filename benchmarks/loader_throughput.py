"""Loader throughput (images/s of finished batches): the device-resident loader, batches gathered from the
memory-mapped cache by DataLoader workers, and torchvision's DataLoader pipeline.

    python benchmarks/loader_throughput.py --data-dir ../shared/data/cifar10.tar.gz --sizes 32 224
    python benchmarks/loader_throughput.py --data-dir /work/photos-bench --sizes 224 --workers 2

CIFAR-sized data (images up to 64 px): random crop (4 px reflection padding) + horizontal flip at 32 px,
resize to the output size, normalise.  Photos: our loaders read the decoded cache (256 px squares) and flip,
resize and normalise on the device; the torchvision baseline is the usual fine-tuning pipeline, ImageFolder
files -> PIL decode + RandomResizedCrop + flip in DataLoader workers -> pinned batches -> device.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torchvision import datasets, transforms

from vision_ensemble.data import (BatchTransform, DeviceImageDataset, device_loader, load_dataset, stream_loader,
                                  tree_root_of)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(batches, device, warmup: int, steps: int) -> float:
    """Images/s over `steps` batches after `warmup`, each batch landed on the device as float."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    sync(device)
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        x, _ = next(it)
        n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - start)


def is_photos(data) -> bool:
    return max(data.train.image_shape[:2]) > 64


def device_resident(data, size, batch_size, device):
    loader = device_loader(DeviceImageDataset(data.train, device), batch_size, shuffle=True, drop_last=True)
    transform = BatchTransform((3, size, size), MEAN, STD, "bilinear", train=True,
                               crop_padding=0 if is_photos(data) else 4)
    while True:
        for images, labels in loader:
            yield transform(images), labels


def memory_mapped(data, size, batch_size, device, workers):
    """Batches gathered from the memory-mapped cache by `workers` DataLoader workers, then moved to `device`."""
    loader = stream_loader(data.train, batch_size, shuffle=True, drop_last=True, num_workers=workers)
    transform = BatchTransform((3, size, size), MEAN, STD, "bilinear", train=True,
                               crop_padding=0 if is_photos(data) else 4)
    while True:
        for images, labels in loader:
            yield transform(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)


def torchvision_pipeline(data, size, batch_size, device, workers, mean=MEAN, std=STD):
    """(images, labels) batches from ImageFolder files through PIL transforms in DataLoader workers."""
    if is_photos(data):
        tf = [transforms.RandomResizedCrop(size, antialias=True), transforms.RandomHorizontalFlip()]
    else:
        tf = [transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip()]
        if size != 32:
            tf.append(transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True))
    tf += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    dataset = datasets.ImageFolder(tree_root_of(data.cache_dir) / "train", transforms.Compose(tf))
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=True,
                                         prefetch_factor=4)
    while True:
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/cifar10.tar.gz")
    p.add_argument("--cache-dir")
    p.add_argument("--cache-size", type=int, help="decoded-cache size for photos (default 256)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pipelines", nargs="+", default=["device", "mapped", "torchvision"],
                   choices=["device", "mapped", "torchvision"], help="measure only these (e.g. for peak memory)")
    args = p.parse_args()
    device = torch.device(args.device)
    data = load_dataset(args.data_dir, args.cache_dir, cache_size=args.cache_size)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; batch {args.batch_size}; {args.steps} timed batches; DataLoader workers {args.workers}; "
          f"cache images {data.train.image_shape}")
    print(f"{'output size':>11}  {'device-resident img/s':>22}  {'memory-mapped img/s':>20}  "
          f"{'torchvision DataLoader img/s':>29}  {'speed-up':>8}")
    pipelines = {"device": lambda size: device_resident(data, size, args.batch_size, device),
                 "mapped": lambda size: memory_mapped(data, size, args.batch_size, device, args.workers),
                 "torchvision": lambda size: torchvision_pipeline(data, size, args.batch_size, device, args.workers)}
    for size in args.sizes:
        rate = {name: measure(pipelines[name](size), device, 3, args.steps) if name in args.pipelines else float("nan")
                for name in pipelines}
        base = rate["torchvision"]
        print(f"{size:>11}  {rate['device']:>22,.0f}  {rate['mapped']:>20,.0f}  {base:>29,.0f}  "
              f"{rate['device'] / base:>5.1f}x / {rate['mapped'] / base:.1f}x")
    peak = {who: resource.getrusage(getattr(resource, f"RUSAGE_{who.upper()}")).ru_maxrss / 2**20
            for who in ("self", "children")}
    print(f"peak RSS: this process {peak['self']:.2f} GiB, largest DataLoader worker {peak['children']:.2f} GiB")


if __name__ == "__main__":
    main()
