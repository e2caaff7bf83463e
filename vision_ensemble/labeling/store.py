"""Labelling a folder of images: the label store (`labels.csv`), the queue of images still to label, and the
export of the labels to a train/val/test image-folder tree that `train/finetune.py --data-dir` reads.

No UI here: `labeling/app.py` is the Gradio app and the command line on top of it.
"""

from __future__ import annotations

import csv
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import DEFAULT_SEED, SPLITS_FILENAME
from ..data import IMAGE_EXTENSIONS, DataError, stratified_split
from ..images import ImageError, load_rgb

LABEL_COLUMNS = ["filename", "label", "time"]
SPLITS = ("train", "val", "test")


class LabelingError(ValueError):
    """Bad input to the labeller (classes, ratios, folders, a damaged labels.csv), with a one-line message."""


def parse_classes(text: str) -> list[str]:
    """'cat, dog' -> ['cat', 'dog']; the names become folder names of the exported tree, so they must be safe."""
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if len(classes) < 2:
        raise LabelingError(f"--classes {text!r}: give at least two class names, comma-separated (e.g. cat,dog)")
    for name in classes:
        if name in (".", "..") or any(ch in name for ch in '/\\:*?"<>|') or name.startswith("."):
            raise LabelingError(f"class name {name!r} cannot be a folder name; use letters, digits, - and _")
    duplicates = [c for c, n in Counter(classes).items() if n > 1]
    if duplicates:
        raise LabelingError(f"--classes lists {', '.join(duplicates)} more than once")
    return classes


def parse_ratios(text: str | tuple | list) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1): train, val and test shares, non-negative, summing to 1, train > 0."""
    try:
        ratios = tuple(float(r) for r in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise LabelingError(f"ratios {text!r}: give three numbers, train,val,test (e.g. 0.8,0.1,0.1)") from None
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise LabelingError(f"ratios {text!r}: give three shares train,val,test that are >= 0, sum to 1 and "
                            "leave train > 0 (e.g. 0.8,0.1,0.1)")
    return ratios


def find_images(folder: str | Path) -> list[str]:
    """Image files under `folder` (any depth, hidden ones left out) as sorted paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabelingError(f"image folder not found: {folder}")
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# --- the label store ---------------------------------------------------------------------------------

class LabelStore:
    """`labels.csv`: one row per labelled file (filename, label, time), in the order the labels were given.

    The last label of a file wins and moves its row to the end, so the last row is what undo removes.  Every
    change rewrites the whole file through a temporary file and `os.replace`, so a process killed at any
    moment leaves either the old or the new file, never half of one.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[str, tuple[str, str]] = {}  # filename -> (label, time), insertion order = label order
        self._lock = threading.Lock()
        if not os.access(self.path.parent, os.W_OK):
            raise LabelingError(f"cannot write {self.path.name} in {self.path.parent}; pass --labels with a "
                                "path in a writable folder")
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None:  # an empty file
                    return
                if reader.fieldnames[:3] != LABEL_COLUMNS:
                    raise LabelingError(f"{self.path}: expected the columns {','.join(LABEL_COLUMNS)}, found "
                                        f"{','.join(reader.fieldnames)}; pass --labels to use another file")
                for row in reader:
                    self.rows.pop(row["filename"], None)
                    self.rows[row["filename"]] = (row["label"], row["time"])

    def labels(self) -> dict[str, str]:
        return {name: label for name, (label, _) in self.rows.items()}

    def set(self, filename: str, label: str) -> None:
        with self._lock:
            rows = dict(self.rows)
            rows.pop(filename, None)
            rows[filename] = (label, datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
            self._commit(rows)

    def undo(self) -> str | None:
        """Remove the last label given; return its file (None when there is nothing to undo)."""
        with self._lock:
            if not self.rows:
                return None
            rows = dict(self.rows)
            filename = next(reversed(rows))
            del rows[filename]
            self._commit(rows)
            return filename

    def _commit(self, rows: dict[str, tuple[str, str]]) -> None:
        """Write `rows` to disk, then make them the store's: a failed write changes neither."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(LABEL_COLUMNS)
                writer.writerows([name, label, time] for name, (label, time) in rows.items())
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it the labels file
            os.replace(tmp, self.path)
        except OSError as exc:
            raise LabelingError(f"could not save labels to {self.path}: {exc.strerror or exc}") from None
        self.rows = rows


# --- the queue -----------------------------------------------------------------------------------------

@dataclass
class Suggestion:
    label: str
    confidence: float  # the calibrated ensemble's top probability; in a review, how likely the given label is wrong
    given: str | None = None  # in a review (--review label_issues.csv): the label the ensemble doubts


@dataclass
class LabelQueue:
    """The images of a folder in labelling order, with the unreadable ones found so far and why."""

    folder: Path
    order: list[str]
    store: LabelStore
    suggestions: dict[str, Suggestion] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    reviewed_after: str | None = None  # a review: an image is done once labelled after this (ISO) time

    def is_done(self, filename: str) -> bool:
        row = self.store.rows.get(filename)
        return row is not None and (self.reviewed_after is None or row[1] > self.reviewed_after)

    def progress(self) -> tuple[int, int, Counter]:
        """(labelled, total readable, labels per class) over the images in the queue."""
        counts = Counter(self.store.rows[f][0] for f in self.order if self.is_done(f))
        return sum(counts.values()), sum(f not in self.unreadable for f in self.order), counts

    def next_image(self, after: str | None = None) -> tuple[str | None, np.ndarray | None]:
        """The first unlabelled, readable image after `after` in queue order (wrapping round, so skipped
        images come back at the end), decoded; (None, None) when every image is labelled or unreadable."""
        start = self.order.index(after) + 1 if after in self.order else 0
        for filename in self.order[start:] + self.order[:start]:
            if self.is_done(filename) or filename in self.unreadable:
                continue
            try:
                return filename, load_rgb(self.folder / filename)
            except ImageError as exc:
                self.unreadable[filename] = str(exc)
        return None, None

    def decode(self, filename: str) -> np.ndarray | None:
        """The pixels of `filename`, or None (and the file listed as unreadable) when it cannot be decoded."""
        try:
            return load_rgb(self.folder / filename)
        except ImageError as exc:
            self.unreadable[filename] = str(exc)
            return None


def rank_by_uncertainty(folder: Path, files: list[str], ensemble) -> tuple[list[str], dict[str, Suggestion], dict[str, str]]:
    """Files least confident first under `ensemble` (an `Ensemble`), its suggested labels, and unreadable files."""
    suggestions, unreadable = {}, {}
    for filename in tqdm(files, desc="ensemble suggestions", unit="img"):
        try:
            pixels = load_rgb(folder / filename)
        except ImageError as exc:
            unreadable[filename] = str(exc)
            continue
        probs, _ = ensemble.predict(torch.from_numpy(pixels).permute(2, 0, 1)[None])
        top = int(probs[0].argmax())
        suggestions[filename] = Suggestion(ensemble.class_names[top], float(probs[0, top]))
    order = sorted(suggestions, key=lambda f: suggestions[f].confidence)  # stable: ties keep file order
    return order + list(unreadable), suggestions, unreadable


def _name_in_folder(folder: Path, file: str) -> str | None:
    """`file` (from label_issues.csv) as a name relative to `folder`: directly when it lies inside, else through
    the splits.csv of the labeller export it lies in (EXPORT/<split>/<class>/<name> is folder/<name>)."""
    path = Path(file).resolve()
    if folder in path.parents:
        return path.relative_to(folder).as_posix()
    root = next((parent for parent in path.parents if (parent / SPLITS_FILENAME).is_file()), None)
    if root is None or len(path.relative_to(root).parts) < 3:
        return None
    name = Path(*path.relative_to(root).parts[2:]).as_posix()
    return name if (folder / name).is_file() else None


def review_queue(folder: Path, issues_file: Path, store: LabelStore) -> LabelQueue:
    """The images of `issues_file` (evaluate.py --label-issues: file, split, given_label, suggested_label, score),
    most likely wrong first, with their given and suggested labels.  An image is reviewed once labels.csv holds a
    label for it given after the issues file was written (the given one confirmed, or a correction), so a
    restarted review resumes where it stopped.  Both times are kept to the millisecond: a label given in the second
    the file was written counts (ISO strings of seconds and of milliseconds still compare in time order)."""
    try:
        with open(issues_file, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise LabelingError(f"cannot read {issues_file}: {exc.strerror or exc}") from None
    if rows and not {"file", "given_label", "suggested_label", "score"} <= set(rows[0]):
        raise LabelingError(f"{issues_file}: not a label_issues.csv written by evaluate.py --label-issues")
    order, suggestions = [], {}
    for row in rows:
        name = _name_in_folder(folder, row["file"])
        if name is None:
            raise LabelingError(f"{row['file']} (in {issues_file.name}) is neither inside {folder} nor in a labeller "
                                "export of it; pass the folder the images were labelled in")
        order.append(name)
        suggestions[name] = Suggestion(row["suggested_label"], float(row["score"]), row["given_label"])
    since = datetime.fromtimestamp(issues_file.stat().st_mtime, timezone.utc).isoformat(timespec="milliseconds")
    return LabelQueue(folder, order, store, suggestions, reviewed_after=since)


# --- export --------------------------------------------------------------------------------------------

def assign_splits(labels: dict[str, str], ratios, seed: int = DEFAULT_SEED) -> dict[str, str]:
    """filename -> 'train'|'val'|'test', stratified by label with data.stratified_split (largest remainder):
    test is taken from all images first, then val from the rest, each the same share of every class."""
    train_share, val_share, test_share = parse_ratios(ratios)
    files = sorted(labels)
    y = np.unique([labels[f] for f in files], return_inverse=True)[1]
    split = np.full(len(files), "train", dtype=object)
    try:
        if test_share > 0:
            split[stratified_split(y, test_share, seed)] = "test"
        rest = np.flatnonzero(split == "train")
        if val_share > 0:
            split[rest[stratified_split(y[rest], val_share / (train_share + val_share), seed)]] = "val"
    except DataError:
        raise LabelingError(f"{len(files)} labelled image(s) are too few for ratios "
                            f"{train_share:g},{val_share:g},{test_share:g}: label more or set a share to 0") from None
    return dict(zip(files, split.tolist()))


@dataclass
class ExportResult:
    out_dir: Path
    counts: dict[str, dict[str, int]]  # class -> split -> images
    linked: int                         # files hard-linked (the rest were copied)
    missing: list[str]                  # labelled files no longer in the folder, left out

    def table(self) -> list[list]:
        return [[name, *(by_split[s] for s in SPLITS), sum(by_split.values())] for name, by_split in self.counts.items()]


def _link_or_copy(source: Path, dest: Path) -> bool:
    """Hard-link `source` at `dest` (no extra space, the original untouched); copy where links are impossible
    (another file system, FAT).  True when linked."""
    try:
        os.link(source, dest)
        return True
    except OSError:
        shutil.copy2(source, dest)
        return False


def export_dataset(folder: str | Path, labels: dict[str, str], out_dir: str | Path, ratios,
                   seed: int = DEFAULT_SEED) -> ExportResult:
    """Write `out_dir/{train,val,test}/<class>/` (hard links of the labelled images) and `out_dir/splits.csv`.

    The tree is built in `<out_dir>.partial` and renamed at the end, so an interrupted export leaves no
    half-written tree; an earlier export in `out_dir` (it has splits.csv) is replaced, any other folder refused.
    """
    folder, out_dir = Path(folder).resolve(), Path(out_dir).expanduser().resolve()
    if out_dir == folder or folder in out_dir.parents:
        raise LabelingError(f"export folder {out_dir} is inside the image folder; choose one outside it "
                            "(its copies would be queued for labelling next time)")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / SPLITS_FILENAME).exists():
        raise LabelingError(f"{out_dir} exists and is not an earlier export (no {SPLITS_FILENAME}); choose a new folder")
    missing = sorted(f for f in labels if not (folder / f).is_file())
    labels = {f: label for f, label in labels.items() if f not in missing}
    if not labels:
        raise LabelingError("no labelled images to export: label some first")
    split_of = assign_splits(labels, ratios, seed)
    classes = sorted(set(labels.values()))
    used_splits = [s for s in SPLITS if s in split_of.values()]

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in used_splits:  # every class in every split: finetune.py checks val/ and test/ match train/
        for name in classes:
            (tmp / split / name).mkdir(parents=True)
    counts = {name: dict.fromkeys(SPLITS, 0) for name in classes}
    linked = 0
    with open(tmp / SPLITS_FILENAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "split"])
        for filename in tqdm(sorted(labels), desc=f"exporting to {out_dir.name}", unit="img", mininterval=1.0):
            label, split = labels[filename], split_of[filename]
            dest = tmp / split / label / filename  # subfolders kept: finetune.py reads class folders at any depth
            dest.parent.mkdir(parents=True, exist_ok=True)
            linked += _link_or_copy(folder / filename, dest)
            counts[label][split] += 1
            writer.writerow([filename, label, split])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return ExportResult(out_dir, counts, linked, missing)
