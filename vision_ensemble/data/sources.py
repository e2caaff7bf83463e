"""Sources: where images come from.  An image-folder tree (`train/<class>/*`, `test/<class>/*`, optional
`val/`), a `.tar.gz`/`.zip` of one (extracted once), `cifar10` (torchvision's download), or a Hugging Face
dataset (a `save_to_disk` folder, parquet files, or a Hub id read through `datasets`, imported only then)."""

from __future__ import annotations

import glob
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


def is_hidden(name: str) -> bool:
    """Hidden files and folders (`.ipynb_checkpoints`, `.DS_Store`, `._photo.jpg` from macOS) are never data."""
    return name.startswith(".")


def walk_split(split_dir: Path) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """Class folders of `split_dir` with their image files (sorted, at any depth), and every other file or folder
    left out with why: hidden, not an image (by extension), or not inside a class folder."""
    classes, skipped = {}, []
    for entry in sorted(split_dir.iterdir()):
        if is_hidden(entry.name):
            skipped.append((entry, "hidden " + ("folder" if entry.is_dir() else "file")))
        elif not entry.is_dir():
            skipped.append((entry, "not inside a class folder"))
        else:
            files = classes[entry.name] = []
            for p in sorted(entry.rglob("*")):
                hidden = next((part for part in p.relative_to(entry).parts if is_hidden(part)), None)
                if hidden is not None:
                    if hidden == p.name:  # report a hidden folder once, not each file in it
                        skipped.append((p, "hidden " + ("folder" if p.is_dir() else "file")))
                elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(p)
                elif p.is_file():
                    skipped.append((p, "not an image (extension)"))
    return classes, skipped


def scan_image_folder(split_dir: Path, class_names: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files and labels of `split_dir/<class>/*`, classes in sorted order (as torchvision's ImageFolder);
    hidden files and folders are left out (`.ipynb_checkpoints` is not a class)."""
    by_class, _ = walk_split(split_dir)
    found = sorted(by_class)
    if class_names is None:
        class_names = found
    elif found != list(class_names):
        raise DataError(f"{split_dir}: classes {found} differ from train's {list(class_names)}")
    if not class_names:
        raise DataError(f"{split_dir}: no class folders")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        paths += by_class[name]
        labels += [label] * len(by_class[name])
    return paths, np.asarray(labels, dtype=np.int64), list(class_names)


# --- Hugging Face `datasets`: a save_to_disk folder, parquet files, or a Hub dataset id -------------------

HF_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}  # theirs -> ours


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading Hugging Face datasets needs the `datasets` package: pip install datasets") from None
    return datasets


def parquet_files(data_dir: str) -> list[str]:
    """The parquet files `data_dir` names: one file, a glob, or a folder holding them (at any depth)."""
    path = Path(data_dir).expanduser()
    if path.is_file():
        return [str(path)] if path.suffix == ".parquet" else []
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    return sorted(p for p in glob.glob(str(path)) if p.endswith(".parquet"))


def is_saved_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def looks_like_hub_id(data_dir: str) -> bool:
    parts = str(data_dir).split("/")
    return len(parts) == 2 and all(parts) and not Path(data_dir).expanduser().exists() and "*" not in data_dir


def open_hf_dataset(data_dir: str):
    """A `datasets.DatasetDict` of our splits (train, val, test) from a saved folder, parquet files or a Hub id."""
    datasets = _datasets()
    path = Path(data_dir).expanduser()
    if is_saved_hf_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir():  # split names from file names (train-*.parquet, test-*.parquet), as on the Hub
        loaded = datasets.load_dataset("parquet", data_dir=str(path))
    elif parquet_files(data_dir):
        loaded = datasets.load_dataset("parquet", data_files={"train": parquet_files(data_dir)})
    else:
        try:
            loaded = datasets.load_dataset(data_dir)
        except Exception as exc:  # offline, unknown id, gated: many exception types
            raise DataError(f"{data_dir} is no local file or folder, and could not load the Hub dataset {data_dir} "
                            f"({type(exc).__name__}); offline, pass a local copy instead: --data-dir <a folder saved "
                            "with save_to_disk, or parquet files>") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    splits = datasets.DatasetDict({HF_SPLITS[name]: split for name, split in loaded.items() if name in HF_SPLITS})
    if "train" not in splits:
        raise DataError(f"{data_dir}: no train split (found {', '.join(loaded)})")
    return splits


def hf_columns(split, data_dir: str) -> tuple[str, str]:
    """(image column, label column): an Image and a ClassLabel feature, else columns named image/img, label/labels."""
    datasets = _datasets()
    features = split.features
    image = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None) or \
        next((n for n in ("image", "img") if n in features), None)
    label = next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None) or \
        next((n for n in ("label", "labels") if n in features), None)
    if image is None or label is None:
        raise DataError(f"{data_dir}: needs an image column (an Image feature, or named image/img) and a label column "
                        f"(a ClassLabel feature, or named label/labels); its columns are {', '.join(features)}")
    return image, label


def hf_class_names(splits, label: str) -> list[str]:
    """Class names from the ClassLabel feature, else the sorted distinct labels of train."""
    feature = splits["train"].features[label]
    if isinstance(feature, _datasets().ClassLabel):
        return list(feature.names)
    return sorted({str(v) for v in splits["train"][label]})


def hf_labels(split, label: str, class_names: list[str]) -> np.ndarray:
    if isinstance(split.features[label], _datasets().ClassLabel):
        return np.asarray(split[label], dtype=np.int64)
    index = {name: i for i, name in enumerate(class_names)}
    try:
        return np.asarray([index[str(v)] for v in split[label]], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"label {exc} is not among train's labels {class_names}") from None


class HFImages:
    """Encoded images of one `datasets` split, read by index (in the cache's worker processes too)."""

    def __init__(self, split, column: str):
        self.rows = split.select_columns([column]).cast_column(column, _datasets().Image(decode=False))
        self.column = column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> bytes | str:
        image = self.rows[int(index)][self.column]
        return image["bytes"] if image["bytes"] is not None else image["path"]
