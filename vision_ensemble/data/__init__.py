"""Data: sources -> decoded cache -> stratified split -> loaders -> batched augmentation on the device.

sources     image-folder trees, archives of them, torchvision's CIFAR-10, Hugging Face datasets
cache       images decoded once by worker processes into memory-mapped uint8 files, resumable
split       the stratified train/val split, stored beside the cache
loaders     device-resident batches (one gather per batch) or batches gathered from the memory map by workers;
            class-balanced sampling
check       the data check: counts, imbalance, skipped files, duplicates and leakage, sizes
transforms  `BatchTransform` (resize, normalise; CIFAR crop + flip) and `PhotoTrainTransform`
            (Kornia RandomResizedCrop, flip, RandAugment, RandomErasing) of a uint8 batch on its device
"""

from .cache import DecodedDataset, ImageArrays, load_dataset, prepare_cache, tree_root_of
from .loaders import (BalancedSampler, DeviceImageDataset, MemmapImageDataset, device_loader, fits_on_device,
                      stream_loader)
from .sources import IMAGE_EXTENSIONS, DataError, find_tree_root, fingerprint, scan_image_folder
from .split import common_split_seed, load_split, stratified_split, subset_indices
from .transforms import BatchTransform, PhotoTrainTransform, choose_augment, train_transform

__all__ = [
    "IMAGE_EXTENSIONS", "BalancedSampler", "BatchTransform",
    "DataError", "DecodedDataset", "DeviceImageDataset", "ImageArrays",
    "MemmapImageDataset", "PhotoTrainTransform", "choose_augment", "common_split_seed", "device_loader", "find_tree_root", "fingerprint",
    "fits_on_device", "load_dataset", "load_split", "prepare_cache", "scan_image_folder", "stratified_split",
    "stream_loader", "subset_indices", "train_transform",
    "tree_root_of",
]
