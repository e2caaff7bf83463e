"""Sources: where images come from.  An image-folder tree (`train/<class>/*`, `test/<class>/*`, optional
`val/`), a `.tar.gz`/`.zip` of one (extracted once), or `cifar10` (torchvision's download)."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


class DataError(RuntimeError):
    """A dataset that cannot be used, with a message that says what to do."""


def is_archive(path: Path) -> bool:
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


def extract(archive: Path, dest: Path) -> None:
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
