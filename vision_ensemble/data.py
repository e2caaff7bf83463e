"""Data: sources -> decoded cache -> stratified split -> loaders -> batched augmentation on the device.

* A source is `cifar10` (torchvision download), an image-folder tree (`train/<class>/*`, `test/<class>/*`,
  optional `val/`) or a `.tar.gz`/`.zip` of one, extracted once into the cache.
* The decoded cache holds uint8 pixels, labels, class names and the source's fingerprint; it is rebuilt when
  the fingerprint changes.  Unreadable images are skipped and counted.
* `DeviceImageDataset` keeps the uint8 pixels on the accelerator and returns whole batches with one gather,
  through a standard `DataLoader` (so Accelerate can shard it and `gather_for_metrics` can de-duplicate).
  `StreamingImageFolder` is the path for data too large for memory: workers decode files.
* `BatchTransform` does crop, flip, resize and normalisation on a uint8 batch wherever it lives.  Its eval
  form, built from a model's saved config, is the preprocessing of training, evaluation and the app alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tarfile
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .config import CIFAR10_NAME, DEFAULT_SEED, DEFAULT_VAL_SIZE, default_cache_root
from .images import ImageError, load_rgb

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
CACHE_FORMAT = 1


class DataError(RuntimeError):
    """A dataset that cannot be used, with a message that says what to do."""


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


# --- sources ---------------------------------------------------------------------------------------

def _is_archive(path: Path) -> bool:
    return path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar")) or path.suffix == ".zip")


def fingerprint(path: Path) -> str:
    """Content hash of an archive, or a hash of every file's path, size and mtime in a folder."""
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                digest.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():  # refuse paths that would escape the folder
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DataError(f"{archive}: unsafe path in archive: {name}")
            zf.extractall(tmp)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def find_tree_root(path: Path) -> Path:
    """The folder holding `train/`: `path` itself or one level down (archives usually wrap the tree)."""
    if (path / "train").is_dir():
        return path
    candidates = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / "train").is_dir()]
    if len(candidates) == 1:
        return candidates[0]
    raise DataError(f"{path}: expected an image-folder tree with train/<class>/ images (and test/<class>/)")


def scan_image_folder(split_dir: Path, class_names: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files and labels of `split_dir/<class>/*`, classes in sorted order (as torchvision's ImageFolder)."""
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if class_names is None:
        class_names = found
    elif found != list(class_names):
        raise DataError(f"{split_dir}: classes {found} differ from train's {list(class_names)}")
    if not class_names:
        raise DataError(f"{split_dir}: no class folders")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), list(class_names)


# --- the decoded cache -----------------------------------------------------------------------------

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
        if not (source.is_dir() or _is_archive(source)):
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
        _extract(source, extracted)
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


# --- the split -------------------------------------------------------------------------------------

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
    tmp = split_file.with_suffix(".partial")
    tmp.write_text(json.dumps(record))
    tmp.replace(split_file)
    return val, split_file


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


# --- loaders ---------------------------------------------------------------------------------------

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


# --- batched preprocessing and augmentation --------------------------------------------------------

_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "area": "area"}


class BatchTransform:
    """uint8 NCHW batch -> normalised float NCHW model input, on whatever device the batch is on.

    Train: random crop from a reflection-padded image and a random horizontal flip, at the source
    resolution (cheap), then the shared resize + normalise.  Eval: resize + normalise only.  The resize
    follows timm's eval geometry: shorter side to size / crop_pct, centre crop to size.
    """

    def __init__(self, input_size: tuple[int, int, int], mean, std, interpolation: str = "bilinear",
                 crop_pct: float = 1.0, train: bool = False, crop_padding: int = 4, hflip: bool = True,
                 channels_last: bool = False):
        self.size = tuple(int(s) for s in input_size[-2:])
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.interpolation = _INTERPOLATION.get(interpolation, "bilinear")
        self.crop_pct = float(crop_pct or 1.0)
        self.train, self.crop_padding, self.hflip = train, crop_padding if train else 0, hflip and train
        self.channels_last = channels_last

    @classmethod
    def from_data_config(cls, data_config: dict, **kwargs) -> "BatchTransform":
        return cls(data_config["input_size"], data_config["mean"], data_config["std"],
                   data_config.get("interpolation", "bilinear"), data_config.get("crop_pct", 1.0), **kwargs)

    def random_crop(self, images: torch.Tensor) -> torch.Tensor:
        pad = self.crop_padding
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        rows = (torch.arange(h, device=images.device).view(1, h, 1) + dy).expand(n, h, w)
        cols = (torch.arange(w, device=images.device).view(1, 1, w) + dx).expand(n, h, w)
        batch = torch.arange(n, device=images.device).view(n, 1, 1).expand(n, h, w)
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)

    def random_flip(self, images: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        th, tw = self.size
        scale = max(th, tw) / self.crop_pct / min(h, w)
        rh, rw = (th, tw) if (h, w) == (th, tw) and self.crop_pct == 1.0 else (
            max(th, round(h * scale)), max(tw, round(w * scale)))
        if rh * rw > 16 * th * tw:
            # An extreme aspect ratio (a 10,000x10 banner) would make the resized image enormous: cut the
            # source to the part the centre crop keeps, plus a margin for the interpolation kernel, first.
            keep_h, keep_w = min(h, math.ceil(th / scale) + 4), min(w, math.ceil(tw / scale) + 4)
            top, left = (h - keep_h) // 2, (w - keep_w) // 2
            images = images[..., top:top + keep_h, left:left + keep_w]
            h, w = keep_h, keep_w
            rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (rh, rw) != (h, w):
            kwargs = {}
            if self.interpolation in ("bilinear", "bicubic"):
                # Antialiasing only changes downscaling; its kernel is slower, so upscaling skips it.
                kwargs = {"align_corners": False, "antialias": rh < h or rw < w}
            images = F.interpolate(images, size=(rh, rw), mode=self.interpolation, **kwargs).clamp_(0, 255)
        top, left = (rh - th) // 2, (rw - tw) // 2
        return images[..., top:top + th, left:left + tw]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.crop_padding:
            x = self.random_crop(x)
        if self.hflip:
            x = self.random_flip(x)
        x = self.resize(x)
        if self.mean.device != x.device:  # moved once, not per batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


def fits_on_device(arrays_bytes: int, device: torch.device) -> bool:
    """Keep decoded data on the device when it takes under a quarter of its memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return arrays_bytes < free / 4
    return arrays_bytes < 8 * 1024**3
