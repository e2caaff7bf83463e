"""The decoded cache: images decoded once into uint8 arrays beside the source's fingerprint, rebuilt when
the source changes; the stratified train/val split stored beside it; `load_dataset` returns all three splits."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..config import CIFAR10_NAME, DEFAULT_SEED, DEFAULT_VAL_SIZE, default_cache_root
from ..images import ImageError, load_rgb
from .sources import DataError, extract, find_tree_root, fingerprint, is_archive, scan_image_folder
from .split import load_split

CACHE_FORMAT = 1


@dataclass
class ImageArrays:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "ImageArrays":
        return ImageArrays(self.images[indices], self.labels[indices])


@dataclass
class DecodedDataset:
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays | None
    class_names: list[str]
    cache_dir: Path
    split_file: Path
    skipped: int  # unreadable files left out of the cache

def _decode_files(paths: list[Path], desc: str) -> tuple[list[np.ndarray | None], int]:
    images, bad = [], []
    for p in tqdm(paths, desc=desc, unit="img", mininterval=1.0):
        try:
            images.append(load_rgb(p))
        except ImageError as exc:
            images.append(None)
            bad.append(f"{p}: {exc}")
    if bad:
        warnings.warn(f"{desc}: skipped {len(bad)} unreadable image file(s), e.g. {bad[0]}", stacklevel=2)
    return images, len(bad)


def _resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Shorter side to fit, then centre crop: used only when a folder mixes image sizes."""
    h, w = size
    pil = Image.fromarray(image)
    scale = max(h / pil.height, w / pil.width)
    pil = pil.resize((max(w, round(pil.width * scale)), max(h, round(pil.height * scale))), Image.BICUBIC)
    left, top = (pil.width - w) // 2, (pil.height - h) // 2
    return np.asarray(pil.crop((left, top, left + w, top + h)))


def _stack(images: list[np.ndarray], labels: np.ndarray, size: tuple[int, int] | None) -> tuple[ImageArrays, tuple[int, int]]:
    keep = [i for i, im in enumerate(images) if im is not None]
    kept = [images[i] for i in keep]
    if not kept:
        raise DataError("no readable images")
    if size is None:
        size = Counter(im.shape[:2] for im in kept).most_common(1)[0][0]
    mixed = sum(im.shape[:2] != tuple(size) for im in kept)
    if mixed:
        warnings.warn(f"{mixed} image(s) are not {size[0]}x{size[1]}; resized and centre-cropped to it", stacklevel=2)
        kept = [im if im.shape[:2] == tuple(size) else _resize_to(im, size) for im in kept]
    return ImageArrays(np.stack(kept), labels[keep]), tuple(size)


def _save_arrays(cache_dir: Path, split: str, arrays: ImageArrays) -> None:
    np.save(cache_dir / f"{split}_images.npy", arrays.images)
    np.save(cache_dir / f"{split}_labels.npy", arrays.labels)


def _load_arrays(cache_dir: Path, split: str) -> ImageArrays | None:
    if not (cache_dir / f"{split}_images.npy").exists():
        return None
    return ImageArrays(np.load(cache_dir / f"{split}_images.npy"), np.load(cache_dir / f"{split}_labels.npy"))


def _build_from_folder(root: Path, cache_dir: Path) -> dict:
    meta = {"splits": {}, "skipped": 0}
    paths, labels, class_names = scan_image_folder(root / "train")
    size = None
    for split in ("train", "val", "test"):
        if split != "train":
            if not (root / split).is_dir():
                continue
            paths, labels, _ = scan_image_folder(root / split, class_names)
        decoded, skipped = _decode_files(paths, f"decoding {split}")
        arrays, size = _stack(decoded, labels, size)
        _save_arrays(cache_dir, split, arrays)
        meta["splits"][split] = len(arrays)
        meta["skipped"] += skipped
    meta["class_names"] = class_names
    meta["image_size"] = list(size)
    return meta


def _build_from_torchvision_cifar10(cache_dir: Path) -> dict:
    from torchvision.datasets import CIFAR10

    meta = {"splits": {}, "skipped": 0}
    try:
        for split, train in (("train", True), ("test", False)):
            ds = CIFAR10(root=cache_dir.parent / "torchvision", train=train, download=True)
            _save_arrays(cache_dir, split, ImageArrays(np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)))
            meta["splits"][split] = len(ds)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"could not download CIFAR-10 through torchvision ({type(exc).__name__}: {exc}). "
                        "Pass --data-dir with an image-folder tree or a .tar.gz/.zip of one "
                        "(e.g. a local cifar10.tar.gz).") from None
    meta["class_names"] = list(ds.classes)
    meta["image_size"] = [32, 32]
    return meta


def prepare_cache(data_dir: str | Path, cache_root: str | Path | None = None) -> Path:
    """Decode `data_dir` once into a cache folder (rebuilt when the source changes); return that folder."""
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    if str(data_dir) == CIFAR10_NAME:
        source, print_name, source_fp = CIFAR10_NAME, CIFAR10_NAME, "torchvision-cifar10"
    else:
        source = Path(data_dir).expanduser().resolve()
        if not source.exists():
            raise DataError(f"data source not found: {data_dir}")
        if not (source.is_dir() or is_archive(source)):
            raise DataError(f"{data_dir}: not a folder or a .tar.gz/.tgz/.tar/.zip archive")
        print_name = source.name.split(".")[0]
        source_fp = fingerprint(source)
    cache_dir = cache_root / f"{print_name}-{hashlib.sha256(str(source).encode()).hexdigest()[:10]}"
    meta_file = cache_dir / "meta.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta.get("fingerprint") == source_fp and meta.get("format") == CACHE_FORMAT:
            return cache_dir
        print(f"data source changed since {cache_dir} was built; rebuilding it")
        for stale in cache_dir.glob("*"):
            if stale.is_file():
                stale.unlink()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source == CIFAR10_NAME:
        meta = _build_from_torchvision_cifar10(cache_dir)
    elif source.is_dir():
        meta = _build_from_folder(find_tree_root(source), cache_dir)
    else:
        extracted = cache_dir / "extracted"
        print(f"extracting {source.name} into {extracted}")
        extract(source, extracted)
        meta = _build_from_folder(find_tree_root(extracted), cache_dir)
    meta.update(source=str(source), fingerprint=source_fp, format=CACHE_FORMAT)
    tmp = meta_file.with_suffix(".partial")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_file)  # written last: a cache without meta.json is rebuilt
    return cache_dir


def tree_root_of(cache_dir: Path) -> Path:
    """The image-folder tree behind a cache (for the streaming path)."""
    meta = json.loads((cache_dir / "meta.json").read_text())
    source = Path(meta["source"])
    return find_tree_root(cache_dir / "extracted" if source.is_file() else source)


def load_dataset(data_dir: str | Path = CIFAR10_NAME, cache_root: str | Path | None = None,
                 val_size: float | int = DEFAULT_VAL_SIZE, seed: int = DEFAULT_SEED) -> DecodedDataset:
    """Decoded train/val/test arrays (val from `val/` if the data has one, else a stratified split)."""
    cache_dir = prepare_cache(data_dir, cache_root)
    meta = json.loads((cache_dir / "meta.json").read_text())
    train = _load_arrays(cache_dir, "train")
    val = _load_arrays(cache_dir, "val")
    split_file = cache_dir / "val_images.npy"
    if val is None:
        val_idx, split_file = load_split(cache_dir, train.labels, val_size, seed)
        mask = np.zeros(len(train), dtype=bool)
        mask[val_idx] = True
        train, val = train.subset(~mask), train.subset(mask)
    return DecodedDataset(train=train, val=val, test=_load_arrays(cache_dir, "test"),
                          class_names=meta["class_names"], cache_dir=cache_dir, split_file=split_file,
                          skipped=meta["skipped"])
