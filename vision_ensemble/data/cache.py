"""The decoded cache: images decoded once, by a pool of worker processes, into memory-mapped uint8 `.npy`
files beside the source's fingerprint; rebuilt when the source changes; the stratified train/val split stored
beside it; `load_dataset` returns all three splits, read from the memory maps only where indexed.

Image size: when the typical (most common) image is within `cache_size`, images are kept at that size as
decoded (CIFAR-10 stays 32x32, bit for bit) and the odd other size is resized and centre-cropped to it.  Larger
images (photos) are resized so the shorter side is `cache_size`, then centre-cropped to a `cache_size` square:
one shape, so a batch is one tensor.

Building is resumable: each split's `*_status.npy` marks every image pending, done or unreadable and is
flushed as work completes; `meta.json` is written last, so a cache without it is never used, and the next
run decodes only the images still pending."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import mmap
import multiprocessing
import os
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image
from tqdm.auto import tqdm

from ..config import CIFAR10_NAME, DEFAULT_SEED, DEFAULT_VAL_SIZE, default_cache_root, default_cache_size
from ..images import ImageError, load_rgb, oriented_size
from . import sources
from .sources import DataError, extract, find_tree_root, fingerprint, is_archive, scan_image_folder
from .split import load_split

CACHE_FORMAT = 3  # 3: hidden files and folders left out, {split}_files.json
PENDING, DONE, UNREADABLE = 0, 1, 2  # values of *_status.npy
CHUNK = 64  # images per task given to a worker; the status file is flushed after each


@dataclass
class ImageArrays:
    """Images and labels.  `pixels` is usually a read-only memory map of the cache: only what is indexed is read."""

    pixels: np.ndarray  # (M, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    rows: np.ndarray | None = None  # which rows of `pixels` these N images are (None: all of them, in order)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.image_shape))

    @property
    def images(self) -> np.ndarray:
        """All N images (N, H, W, 3): the memory map itself when it holds exactly them, else a copy in RAM."""
        return self.pixels if self.rows is None else self.gather(np.arange(len(self)))

    def subset(self, indices: np.ndarray) -> "ImageArrays":
        """A view of some of the images (no pixels are read or copied)."""
        rows = np.arange(len(self))[indices] if self.rows is None else self.rows[indices]
        return ImageArrays(self.pixels, self.labels[indices], rows)

    def gather(self, indices) -> np.ndarray:
        """Images `indices` in RAM, in that order, read with one sorted fancy index (sequential on disk)."""
        rows = np.asarray(indices) if self.rows is None else self.rows[indices]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        out[order] = self.pixels[rows[order]]
        if isinstance(self.pixels, np.memmap):
            # The pages just read stay in the OS page cache, but leave this process's resident set, so a
            # long epoch over a large cache does not show up as (reclaimable) memory held by training.
            self.pixels._mmap.madvise(mmap.MADV_DONTNEED)
        return out

    def files(self) -> list[str]:
        """The file behind each image (`row N` of its split where the source is no file tree), from the cache's
        `{split}_files.json`: label_issues.csv and the labeller name images by it."""
        if not isinstance(self.pixels, np.memmap):
            raise DataError("these images are not read from a cache folder")
        image_file = Path(self.pixels.filename)
        list_file = image_file.with_name(image_file.name.replace("_images.npy", "_files.json"))
        names = json.loads(list_file.read_text()) if list_file.exists() else None
        rows = range(len(self)) if self.rows is None else self.rows
        return [names[r] if names else f"{image_file.name.split('_')[0]} row {r}" for r in rows]

    def __getstate__(self):  # DataLoader workers reopen the memory map instead of receiving a copy of it
        state = dict(self.__dict__)
        if isinstance(self.pixels, np.memmap):
            state["pixels"] = Path(self.pixels.filename)
        return state

    def __setstate__(self, state):
        if isinstance(state["pixels"], Path):
            state["pixels"] = np.load(state["pixels"], mmap_mode="c")
        self.__dict__.update(state)


@dataclass
class DecodedDataset:
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays | None
    class_names: list[str]
    cache_dir: Path
    split_file: Path
    skipped: int  # unreadable files left out of the cache


@dataclass
class SplitSource:
    """One split to decode: `items[i]` is what `load_rgb` reads (a file path, or a `datasets` image's bytes)."""

    items: object  # a sequence
    labels: np.ndarray
    paths: list[Path] | None = None  # file sources: named in meta.json when unreadable

    def name(self, index: int) -> str:
        return str(self.paths[index]) if self.paths is not None else f"row {index}"


# --- worker processes: each gets the items of every split once (inherited through fork) ------------------

_ITEMS: dict[str, object] = {}


def _init_worker(items: dict[str, object]) -> None:
    global _ITEMS
    _ITEMS = items


def _read_sizes(split: str, indices: np.ndarray) -> Counter:
    """Image sizes (height, width after EXIF rotation) from the headers, without decoding."""
    sizes = Counter()
    for i in indices:
        item = _ITEMS[split][i]
        try:
            with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
                sizes[oriented_size(image)] += 1
        except (OSError, SyntaxError, ValueError):
            pass  # unreadable: the decode reports it
    return sizes


def _decode_chunk(split: str, image_file: str, indices: np.ndarray, size: tuple[int, int]) -> list[tuple[int, str | None]]:
    """Decode images `indices` straight into their rows of the memory-mapped cache file."""
    images = np.load(image_file, mmap_mode="r+")
    results = []
    for i in indices:
        try:
            images[i] = load_rgb(_ITEMS[split][i], size=size)
            results.append((int(i), None))
        except ImageError as exc:
            results.append((int(i), str(exc)))
    images.flush()  # on disk (or in the page cache, which outlives a killed process) before it is marked done
    del images
    return results


def _worker_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _pool(items: dict[str, object]):
    # fork: workers inherit the split items (a `datasets` table, path lists) instead of unpickling them.
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    pool = ProcessPoolExecutor(_worker_count(), mp_context=context, initializer=_init_worker, initargs=(items,))
    try:
        yield pool
    finally:  # on Ctrl-C, stop after the chunks in progress instead of decoding the whole queue
        pool.shutdown(cancel_futures=True)


def _chunks(indices: np.ndarray) -> list[np.ndarray]:
    return [indices[i:i + CHUNK] for i in range(0, len(indices), CHUNK)]


def planned_size(sizes: Counter, cache_size: int) -> tuple[int, int]:
    """The cached image shape for images of these (height, width) counts: the most common size when it is within
    `cache_size`, else a `cache_size` square (see the module docstring)."""
    common = sizes.most_common(1)[0][0]
    return common if max(common) <= cache_size else (cache_size, cache_size)


def _choose_size(pool: ProcessPoolExecutor, split: str, count: int, cache_size: int) -> tuple[int, int]:
    sizes = Counter()
    for result in pool.map(_read_sizes, [split] * len(range(0, count, CHUNK)), _chunks(np.arange(count))):
        sizes.update(result)
    if not sizes:
        raise DataError("no readable images")
    common = sizes.most_common(1)[0][0]
    if planned_size(sizes, cache_size) == common:
        other = sum(sizes.values()) - sizes[common]
        if other:
            warnings.warn(f"{other} image(s) are not {common[0]}x{common[1]}; resized and centre-cropped to it",
                          stacklevel=3)
        return common
    print(f"most images are {common[0]}x{common[1]} or so, larger than the cache size: they are stored resized "
          f"(shorter side {cache_size} px) and centre-cropped to {cache_size}x{cache_size} (--cache-size)")
    return cache_size, cache_size


def _resumable(cache_dir: Path, source_fp: str) -> bool:
    """An interrupted build of this same source is there to finish."""
    plan_file = cache_dir / "build.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    return plan.get("fingerprint") == source_fp and plan.get("format") == CACHE_FORMAT


def _build(cache_dir: Path, splits: dict[str, SplitSource], source_fp: str, cache_size: int) -> dict:
    """Decode every split into memory-mapped files, resuming an interrupted build of the same source."""
    plan_file = cache_dir / "build.json"
    resuming = _resumable(cache_dir, source_fp)
    with _pool({name: split.items for name, split in splits.items()}) as pool:
        if resuming:
            size = tuple(json.loads(plan_file.read_text())["image_size"])
        else:
            for stale in cache_dir.glob("*.npy"):
                stale.unlink()
            size = _choose_size(pool, "train", len(splits["train"].labels), cache_size)
            for name, split in splits.items():
                np.lib.format.open_memmap(cache_dir / f"{name}_images.npy", "w+", np.uint8, (len(split.labels), *size, 3))
                np.save(cache_dir / f"{name}_labels.npy", split.labels)
                np.save(cache_dir / f"{name}_status.npy", np.zeros(len(split.labels), np.uint8))
            plan_file.write_text(json.dumps({"fingerprint": source_fp, "format": CACHE_FORMAT, "image_size": size}))
        statuses = {name: np.load(cache_dir / f"{name}_status.npy", mmap_mode="r+") for name in splits}
        total = sum(len(s) for s in statuses.values())
        pending = sum(int((s == PENDING).sum()) for s in statuses.values())
        if resuming and pending:
            print(f"resuming an interrupted cache build in {cache_dir}: {total - pending:,} of {total:,} images done")
        futures = {pool.submit(_decode_chunk, name, str(cache_dir / f"{name}_images.npy"), chunk, size): name
                   for name, status in statuses.items() for chunk in _chunks(np.flatnonzero(status == PENDING))}
        with tqdm(total=total, initial=total - pending, desc=f"decoding ({_worker_count()} processes)", unit="img",
                  mininterval=1.0, smoothing=0.05) as bar:
            for future in as_completed(futures):
                status, results = statuses[futures[future]], future.result()
                for i, error in results:
                    status[i] = DONE if error is None else UNREADABLE
                status.flush()
                bar.update(len(results))
    meta = {"splits": {}, "skipped_files": [], "image_size": list(size), "cache_size": cache_size}
    for name, status in statuses.items():
        meta["splits"][name] = int((status == DONE).sum())
        meta["skipped_files"] += [f"{name}: {splits[name].name(i)}" for i in np.flatnonzero(status == UNREADABLE)]
    meta["skipped"] = len(meta["skipped_files"])
    for name, split in splits.items():
        if split.paths is not None:
            (cache_dir / f"{name}_files.json").write_text(json.dumps([str(path) for path in split.paths]))
    if meta["skipped"]:
        warnings.warn(f"skipped {meta['skipped']} unreadable image file(s), e.g. {meta['skipped_files'][0]} "
                      f"(all listed in {cache_dir / 'meta.json'})", stacklevel=3)
    if meta["splits"]["train"] == 0:
        raise DataError("no readable images")
    return meta


def _folder_splits(root: Path) -> tuple[dict[str, SplitSource], list[str]]:
    paths, labels, class_names = scan_image_folder(root / "train")
    splits = {"train": SplitSource([str(p) for p in paths], labels, paths)}
    for name in ("val", "test"):
        if (root / name).is_dir():
            paths, labels, _ = scan_image_folder(root / name, class_names)
            splits[name] = SplitSource([str(p) for p in paths], labels, paths)
    return splits, class_names


def _hf_splits(hf, data_dir: str) -> tuple[dict[str, SplitSource], list[str]]:
    image, label = sources.hf_columns(hf["train"], data_dir)
    class_names = sources.hf_class_names(hf, label)
    splits = {name: SplitSource(sources.HFImages(split, image), sources.hf_labels(split, label, class_names))
              for name, split in hf.items()}
    return splits, class_names


def _build_from_torchvision_cifar10(cache_dir: Path) -> dict:
    from torchvision.datasets import CIFAR10

    meta = {"splits": {}, "skipped": 0, "skipped_files": []}
    try:
        for split, train in (("train", True), ("test", False)):
            ds = CIFAR10(root=cache_dir.parent / "torchvision", train=train, download=True)
            np.save(cache_dir / f"{split}_images.npy", np.asarray(ds.data))
            np.save(cache_dir / f"{split}_labels.npy", np.asarray(ds.targets, dtype=np.int64))
            meta["splits"][split] = len(ds)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"could not download CIFAR-10 through torchvision ({type(exc).__name__}: {exc}). "
                        "Pass --data-dir with an image-folder tree or a .tar.gz/.zip of one "
                        "(e.g. a local cifar10.tar.gz).") from None
    meta["class_names"] = list(ds.classes)
    meta["image_size"] = [32, 32]
    return meta


def prepare_cache(data_dir: str | Path, cache_root: str | Path | None = None, cache_size: int | None = None) -> Path:
    """Decode `data_dir` once into a cache folder (rebuilt when the source changes); return that folder."""
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    cache_size = cache_size or default_cache_size(224)
    data_dir = str(data_dir)
    hf = None
    if data_dir == CIFAR10_NAME:
        source, print_name, source_fp = CIFAR10_NAME, CIFAR10_NAME, "torchvision-cifar10"
    elif sources.looks_like_hub_id(data_dir) or sources.parquet_files(data_dir) or \
            sources.is_saved_hf_dataset(Path(data_dir).expanduser()):
        hf = sources.open_hf_dataset(data_dir)
        local = Path(data_dir).expanduser()
        source = str(local.resolve()) if local.exists() else data_dir
        print_name = next((part for part in reversed(Path(data_dir).parts) if not glob.has_magic(part)), "dataset")
        print_name = print_name.split(".")[0]
        source_fp = "-".join(f"{name}:{split._fingerprint}" for name, split in hf.items())
    else:
        source = Path(data_dir).expanduser().resolve()
        if not source.exists():
            raise DataError(f"data source not found: {data_dir}")
        if not (source.is_dir() or is_archive(source)):
            raise DataError(f"{data_dir}: not a folder, a .tar.gz/.tgz/.tar/.zip archive, parquet files or a "
                            "Hugging Face dataset")
        print_name = source.name.split(".")[0]
        source_fp = fingerprint(source)
    key = hashlib.sha256(f"{source}\0{cache_size}".encode()).hexdigest()[:10]
    cache_dir = cache_root / f"{print_name}-{cache_size}px-{key}"
    cache_root.mkdir(parents=True, exist_ok=True)
    # One builder per cache folder, whoever else uses it: the node's other processes, the other nodes when the
    # cache is on a shared filesystem, other jobs. The rest wait here, then find it built.
    lock = FileLock(cache_dir.with_name(cache_dir.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # once per machine under a distributed launcher
            print(f"waiting for another process to finish building {cache_dir}")
        lock.acquire()
    try:
        _fill_cache(cache_dir, data_dir, source, source_fp, hf, cache_size)
    finally:
        lock.release()
    return cache_dir


def _fill_cache(cache_dir: Path, data_dir: str, source, source_fp: str, hf, cache_size: int) -> None:
    """Build `cache_dir` unless it is there and current (under the cache's file lock)."""
    meta_file = cache_dir / "meta.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta.get("fingerprint") == source_fp and meta.get("format") == CACHE_FORMAT:
            return
        print(f"data source changed since {cache_dir} was built; rebuilding it")
        for stale in cache_dir.glob("*"):
            if stale.is_file():
                stale.unlink()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source == CIFAR10_NAME:
        meta = _build_from_torchvision_cifar10(cache_dir)
    else:
        if hf is not None:
            splits, class_names = _hf_splits(hf, data_dir)
        elif source.is_dir():
            splits, class_names = _folder_splits(find_tree_root(source))
        else:
            extracted = cache_dir / "extracted"
            if not (_resumable(cache_dir, source_fp) and extracted.is_dir()):
                print(f"extracting {source.name} into {extracted}")
                extract(source, extracted)
            splits, class_names = _folder_splits(find_tree_root(extracted))
        meta = _build(cache_dir, splits, source_fp, cache_size)
        meta["class_names"] = class_names
    meta.update(source=str(source), fingerprint=source_fp, format=CACHE_FORMAT)
    tmp = meta_file.with_suffix(".partial")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_file)  # written last: a cache without meta.json is finished (or rebuilt) before use


def tree_root_of(cache_dir: Path) -> Path:
    """The image-folder tree behind a cache (for baselines that read the files)."""
    meta = json.loads((cache_dir / "meta.json").read_text())
    source = Path(meta["source"])
    if (cache_dir / "extracted").is_dir():
        return find_tree_root(cache_dir / "extracted")
    if not source.is_dir() or sources.is_saved_hf_dataset(source) or sources.parquet_files(str(source)):
        raise DataError(f"{meta['source']} is not an image-folder tree")
    return find_tree_root(source)


def _load_arrays(cache_dir: Path, split: str) -> ImageArrays | None:
    if not (cache_dir / f"{split}_images.npy").exists():
        return None
    # Copy-on-write: writable for torch.from_numpy, but nothing ever goes back to the file.
    arrays = ImageArrays(np.load(cache_dir / f"{split}_images.npy", mmap_mode="c"),
                         np.load(cache_dir / f"{split}_labels.npy"))
    status_file = cache_dir / f"{split}_status.npy"
    if status_file.exists():
        done = np.load(status_file) == DONE
        if not done.all():  # unreadable files keep an empty row, left out here
            arrays = arrays.subset(np.flatnonzero(done))
    return arrays


def load_dataset(data_dir: str | Path = CIFAR10_NAME, cache_root: str | Path | None = None,
                 val_size: float | int = DEFAULT_VAL_SIZE, seed: int = DEFAULT_SEED,
                 cache_size: int | None = None) -> DecodedDataset:
    """Train/val/test images backed by the memory-mapped cache (val from the data's own val split if it has
    one, else a stratified split of train).  `cache_size`: see the module docstring (default 256 px)."""
    cache_dir = prepare_cache(data_dir, cache_root, cache_size)
    meta = json.loads((cache_dir / "meta.json").read_text())
    train = _load_arrays(cache_dir, "train")
    val = _load_arrays(cache_dir, "val")
    split_file = cache_dir / "val_images.npy"
    if val is None:
        val_idx, split_file = load_split(cache_dir, train.labels, val_size, seed)
        mask = np.zeros(len(train), dtype=bool)
        mask[val_idx] = True
        train, val = train.subset(np.flatnonzero(~mask)), train.subset(np.flatnonzero(mask))
    return DecodedDataset(train=train, val=val, test=_load_arrays(cache_dir, "test"),
                          class_names=meta["class_names"], cache_dir=cache_dir, split_file=split_file,
                          skipped=meta["skipped"])
