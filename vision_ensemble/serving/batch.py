"""Classify a folder, archive, glob or list of images with an ensemble, into a CSV, JSON Lines or Parquet table.

    vision-ensemble predict photos/                          # every image under photos/ -> predictions.csv
    vision-ensemble predict photos.zip --output out.jsonl --manifest owner/ensemble-repo
    vision-ensemble predict "shots/**/*.jpg" --top-k 5 --probabilities --output out.parquet
    vision-ensemble predict files.csv --resume               # a killed run continues where its table ends

The files are listed first (names only); DataLoader worker processes decode them straight to the ensemble's
`source_size` (JPEG draft mode for large photos) while this process runs the networks on the batch before; rows
are written batch by batch, so memory stays flat however many files there are. Every file gets a row: one that
cannot be classified (unreadable, empty, not an image, too many pixels) gets its reason in `error`.
The numbers are those of the Space and `POST /api/predict` (`predict_batch`: one prediction path).

From Python, the same records:

    from vision_ensemble import load
    classifier = load("models/cifar10")
    for record in classifier.predict(["cat.jpg", "ship.png"]):
        print(record["path"], record["top1"], record["top1_probability"], record["prediction_set"])
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import DEFAULT_MANIFEST, DEFAULT_TOP_K, EVAL_BATCH_PIXELS
from ..data.sources import is_archive, is_hidden
from ..evaluation.ensemble import Ensemble
from ..hub import HubError, resolve_manifest
from ..images import ImageError, load_rgb
from ..model import ModelError
from .predict import Prediction, model_version, predict_batch

PATH_COLUMNS = ("path", "file", "filepath", "filename", "image")  # a CSV list's path column, unless named
MAX_AUTO_BATCH = 256  # images per batch when `--batch-size auto`: rows reach the table (and a resume) this often
# ... and at most 1/BATCHES_PER_WORKER of each worker's share: a DataLoader worker decodes whole batches, so a
# batch as large as the input list is decoded by one worker while the networks wait (BENCHMARKS.md, issue 31).
BATCHES_PER_WORKER = 4
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


class InputsError(ValueError):
    """A SOURCE or output that cannot be used, said in one line."""


# --- what to classify ------------------------------------------------------------------------------------

@dataclass
class Inputs:
    """The files a SOURCE names: `names` as the table's `path` column shows them, `locations` where they are read
    (a path, or a member of `archive`)."""
    names: list[str]
    locations: list[str]
    archive: Path | None = None
    hidden: int = 0  # hidden files and folders left out (.DS_Store, .ipynb_checkpoints, ._photo.jpg)
    _handle: object = field(default=None, repr=False)
    _pid: int | None = field(default=None, repr=False)

    def read(self, i: int) -> bytes | Path:
        """The i-th file: its path, or its bytes from the archive (opened once in each worker process)."""
        if self.archive is None:
            return Path(self.locations[i])
        if self._pid != os.getpid():
            self._handle = (zipfile.ZipFile(self.archive) if self.archive.suffix == ".zip"
                            else tarfile.open(self.archive))
            self._pid = os.getpid()
        if isinstance(self._handle, zipfile.ZipFile):
            return self._handle.read(self.locations[i])
        return self._handle.extractfile(self.locations[i]).read()

    def subset(self, keep: list[int]) -> "Inputs":
        return Inputs([self.names[i] for i in keep], [self.locations[i] for i in keep], self.archive, self.hidden)


def _walk(folder: Path) -> tuple[list[str], int]:
    """Every file under `folder`, sorted, hidden ones left out and counted."""
    files, hidden = [], 0
    for root, dirs, names in os.walk(folder):
        hidden += sum(map(is_hidden, dirs)) + sum(map(is_hidden, names))
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        files += [os.path.join(root, n) for n in sorted(names) if not is_hidden(n)]
    return files, hidden


def _archive_members(archive: Path) -> tuple[list[str], int]:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            names = [info.filename for info in z.infolist() if not info.is_dir()]
    else:
        with tarfile.open(archive) as t:
            names = [m.name for m in t.getmembers() if m.isfile()]
    visible = [n for n in names if not any(is_hidden(part) for part in Path(n).parts)]
    return visible, len(names) - len(visible)


def _listed_paths(list_file: Path, path_column: str | None) -> list[str]:
    """The paths in a text file (one a line; blank lines and # comments skipped) or a CSV's path column."""
    if list_file.suffix.lower() != ".csv":
        lines = (line.strip() for line in list_file.read_text().splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    with list_file.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        wanted = [path_column] if path_column else PATH_COLUMNS
        column = next((c for c in columns if c.strip().lower() in {w.lower() for w in wanted}), None)
        if column is None:
            raise InputsError(f"{list_file}: no {' / '.join(wanted)} column among {columns}; name it with "
                              "--path-column")
        return [row[column].strip() for row in reader if (row[column] or "").strip()]


def list_inputs(source: str, path_column: str | None = None) -> Inputs:
    """The files `source` names: an image file, a folder (recursive), a glob, a text file or CSV listing paths,
    or a .zip / .tar(.gz) archive."""
    path = Path(source).expanduser()
    if path.is_dir():
        files, hidden = _walk(path)
        return Inputs(files, files, hidden=hidden)
    if is_archive(path):
        try:
            members, hidden = _archive_members(path)
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise InputsError(f"{source}: cannot read the archive ({exc})") from None
        return Inputs([f"{source}:{m}" for m in members], members, archive=path, hidden=hidden)
    if path.is_file() and path.suffix.lower() in (".txt", ".csv"):
        names = _listed_paths(path, path_column)
        # A relative path is read as written when it exists from here, else from the list's folder.
        locations = [n if Path(n).expanduser().exists() or Path(n).is_absolute() else str(path.parent / n)
                     for n in names]
        return Inputs(names, locations)
    if path.is_file():
        return Inputs([source], [source])
    if glob.has_magic(source):
        files = sorted(p for p in glob.glob(os.path.expanduser(source), recursive=True) if os.path.isfile(p))
        visible = [p for p in files if not any(is_hidden(part) for part in Path(p).parts)]
        return Inputs(visible, visible, hidden=len(files) - len(visible))
    raise InputsError(f"{source}: no such file or folder, and no file matches it as a glob")


# --- decoding (in DataLoader workers) ----------------------------------------------------------------------

def decode(source: bytes | Path | str | Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 pixels at `size` (the ensemble's source_size), or ImageError saying why not."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ImageError(f"an array image must be (height, width, 3) uint8, not {source.shape} {source.dtype}")
        source = Image.fromarray(source)
    elif isinstance(source, (str, Path)):
        try:
            if os.path.getsize(source) == 0:
                raise ImageError("the file is empty")
        except OSError as exc:
            raise ImageError(f"cannot read the file ({exc.strerror or exc})") from None
    elif isinstance(source, bytes) and not source:
        raise ImageError("the file is empty")
    return load_rgb(source, size=size)


class DecodedInputs(torch.utils.data.Dataset):
    """(index, CHW uint8 tensor or None, error or None) for each input; read and decoded where it is asked for."""

    def __init__(self, inputs: Inputs, size: tuple[int, int]):
        self.inputs, self.size = inputs, size

    def __len__(self) -> int:
        return len(self.inputs.names)

    def __getitem__(self, i: int):
        return decoded_item(i, lambda: self.inputs.read(i), self.size)


def decoded_item(i: int, read, size: tuple[int, int]):
    """(i, CHW uint8 tensor, None) of what `read()` gives, decoded to `size`, or (i, None, why not)."""
    try:
        pixels = decode(read(), size)
    except ImageError as exc:
        return i, None, str(exc)
    except (OSError, KeyError) as exc:  # an archive member that cannot be read
        return i, None, f"cannot read the file ({exc})"
    return i, torch.from_numpy(pixels).permute(2, 0, 1), None


def collate(items):
    """(indices of the decoded images, their NCHW batch or None, [(index, error)] of the rest)."""
    decoded = [(i, x) for i, x, error in items if error is None]
    batch = torch.stack([x for _, x in decoded]) if decoded else None
    return [i for i, _ in decoded], batch, [(i, error) for i, _, error in items if error is not None]


# --- the records ------------------------------------------------------------------------------------------

def record_columns(top_k: int, class_names: list[str], probabilities: bool) -> list[str]:
    columns = ["path"] + [c for k in range(1, top_k + 1) for c in (f"top{k}", f"top{k}_probability")]
    columns += ["prediction_set", "uncertain", "agreement"]
    columns += [f"probability_{name}" for name in class_names] if probabilities else []
    return columns + ["error"]


def to_record(path: str, prediction: Prediction | None, top_k: int, class_names: list[str], probabilities: bool,
              error: str | None = None) -> dict:
    """One row: the ensemble's top-k (calibrated), its conformal prediction set, the uncertainty flag, the share of
    members whose top class is the ensemble's, every class's probability with `probabilities`; or the error."""
    record = dict.fromkeys(record_columns(top_k, class_names, probabilities))
    record.update(path=path, error=error)
    if prediction is None:
        return record
    for k, answer in enumerate(prediction.top_k[:top_k], 1):
        record[f"top{k}"], record[f"top{k}_probability"] = answer.label, answer.probability
    record.update(prediction_set=prediction.prediction_set, uncertain=prediction.uncertain,
                  agreement=sum(m.agrees for m in prediction.members) / len(prediction.members))
    if probabilities:
        record.update({f"probability_{a.label}": a.probability for a in prediction.top_k})
    return record


@dataclass
class Classifier:
    """An ensemble ready to classify files and images, as `vision-ensemble predict` does: `load(...)` makes one."""
    ensemble: Ensemble
    version: str = ""

    @classmethod
    def load(cls, manifest: str | Path = DEFAULT_MANIFEST, runtime: str = "onnx", tta: bool | None = None,
             threads: int | None = None) -> "Classifier":
        """The ensemble of `manifest` (ensemble.json, a folder holding it, or a Hub repo id), its networks run by ONNX
        Runtime (`runtime="onnx"`, as the Space, on `threads` CPU threads each, default torch's) or eager PyTorch;
        `tta` overrides the manifest's flip TTA."""
        try:
            ensemble = Ensemble.from_manifest(resolve_manifest(manifest))
        except HubError as exc:
            raise ModelError(str(exc)) from None
        if tta is not None:
            ensemble.tta_flip = tta
        if runtime == "onnx":
            ensemble.use_onnxruntime(tempfile.mkdtemp(prefix="vision-ensemble-onnx-"), threads)
        return cls(ensemble, model_version(ensemble))

    @property
    def class_names(self) -> list[str]:
        return self.ensemble.class_names

    def auto_batch_size(self, count: int | None = None, workers: int = 0) -> int:
        """As evaluation's: EVAL_BATCH_PIXELS worth of the largest member input, at most MAX_AUTO_BATCH; for `count`
        images decoded by `workers` processes, small enough to give each worker BATCHES_PER_WORKER batches, so
        that the workers decode side by side and ahead of the networks."""
        largest = max(m.data_config["input_size"][1] * m.data_config["input_size"][2] for m in self.ensemble.members)
        size = min(MAX_AUTO_BATCH, EVAL_BATCH_PIXELS // largest)
        if count and workers:
            size = min(size, math.ceil(count / (workers * BATCHES_PER_WORKER)))
        return max(1, size)

    def _records(self, names: list, indices: list[int], batch: torch.Tensor | None, errors: list[tuple[int, str]],
                 top_k: int, probabilities: bool) -> list[dict]:
        """One batch's records in index order (`collate`'s output): the decoded images' answers, the others' errors."""
        answered = {}
        if indices:
            k = len(self.class_names) if probabilities else top_k
            answers = predict_batch(self.ensemble, batch, k, self.version)
            answered = {i: to_record(names[i], a, top_k, self.class_names, probabilities)
                        for i, a in zip(indices, answers)}
        answered.update({i: to_record(names[i], None, top_k, self.class_names, probabilities, error)
                         for i, error in errors})
        return [answered[i] for i in sorted(answered)]

    def predict(self, images, top_k: int = DEFAULT_TOP_K, probabilities: bool = False,
                batch_size: int | None = None) -> list[dict]:
        """Records (dicts, in order) for one or a list of image paths, PIL images or (H, W, 3) uint8 arrays; a
        path that cannot be classified gets a record whose `error` says why (images given as pixels: `path` None)."""
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        names = [str(x) if isinstance(x, (str, Path)) else None for x in images]
        batch_size = batch_size or self.auto_batch_size()
        records: list[dict] = []
        for start in range(0, len(images), batch_size):
            items = [decoded_item(i, lambda image=images[i]: image, self.ensemble.source_size)
                     for i in range(start, min(start + batch_size, len(images)))]
            records += self._records(names, *collate(items), top_k, probabilities)
        return records

    def predict_inputs(self, inputs: Inputs, top_k: int = DEFAULT_TOP_K, probabilities: bool = False,
                       batch_size: int | None = None, workers: int | None = None) -> Iterator[list[dict]]:
        """The records of `inputs`, batch by batch in their order, decoded by `workers` processes (default: one a
        core; 0: in this process) while this one runs the networks."""
        for indices, batch, errors in self.decoding_loader(inputs, batch_size, workers):
            yield self._records(inputs.names, indices, batch, errors, top_k, probabilities)

    def decoding_loader(self, inputs: Inputs, batch_size: int | None = None,
                        workers: int | None = None) -> torch.utils.data.DataLoader:
        """`collate`'s batches of `inputs` decoded to the ensemble's source_size by `workers` processes (default: one
        a core), `batch_size` images each (default: `auto_batch_size` for them)."""
        workers = (os.cpu_count() or 1) if workers is None else workers
        return torch.utils.data.DataLoader(
            DecodedInputs(inputs, self.ensemble.source_size),
            batch_size=batch_size or self.auto_batch_size(len(inputs.names), workers),
            num_workers=workers, collate_fn=collate, prefetch_factor=2 if workers else None)


def load(manifest: str | Path = DEFAULT_MANIFEST, runtime: str = "onnx", tta: bool | None = None,
         threads: int | None = None) -> Classifier:
    """`Classifier.load`: the ensemble of `manifest` (default: the shipped CIFAR-10 ensemble), ready to `predict`."""
    return Classifier.load(manifest, runtime, tta, threads)


# --- the table --------------------------------------------------------------------------------------------

class Table:
    """The output table, appended batch by batch. CSV and JSON Lines are written as they go; Parquet (which cannot
    be appended to) goes to JSON Lines beside it and is converted when the run ends. A run killed mid-write
    leaves at most a partial last line, which `--resume` drops before it appends."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        self.format = FORMATS.get(path.suffix.lower())
        if self.format is None:
            raise InputsError(f"{path}: write .csv, .jsonl or .parquet")
        self.stream = path.with_name(path.name + ".partial.jsonl") if self.format == "parquet" else path

    def exists(self) -> bool:
        return self.path.exists() or self.stream.exists()

    def done(self) -> set[str]:
        """The paths already in the table (for --resume); a partial last line is cut off."""
        if self.format == "parquet" and self.path.exists() and not self.stream.exists():
            import pandas as pd  # a finished table reopened: its rows go back to the stream, to be appended to
            self.stream.write_text(pd.read_parquet(self.path).to_json(orient="records", lines=True))
        if not self.stream.exists():
            return set()
        data = self.stream.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.stream.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        if self.format == "csv":
            with self.stream.open(newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is not None and header != self.columns:
                    raise InputsError(f"{self.path} has the columns {header}, not this run's {self.columns}: resume "
                                      "with the same --top-k and --probabilities, or write another --output")
                return {row[0] for row in reader if row}
        return {json.loads(line)["path"] for line in self.stream.read_text().splitlines() if line.strip()}

    def append(self, records: list[dict]) -> None:
        new = not self.stream.exists() or self.stream.stat().st_size == 0
        with self.stream.open("a", newline="") as f:
            if self.format == "csv":
                writer = csv.writer(f)
                if new:
                    writer.writerow(self.columns)
                writer.writerows([_csv_value(r[c]) for c in self.columns] for r in records)
            else:
                f.write("".join(json.dumps(r) + "\n" for r in records))

    def finish(self) -> None:
        if self.format == "parquet" and self.stream.exists():
            import pandas as pd

            rows = [json.loads(line) for line in self.stream.read_text().splitlines() if line.strip()]
            pd.DataFrame(rows, columns=self.columns).to_parquet(self.path, index=False)
            self.stream.unlink()


def _csv_value(value):
    if isinstance(value, list):
        return "|".join(value)  # a prediction set: cat|dog
    return "" if value is None else value


# --- the command ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vision-ensemble predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="an image, a folder (recursive; hidden files and folders left out), a glob (quote "
                   "it), a .txt of paths, a .csv with a path column, or a .zip / .tar / .tar.gz archive")
    p.add_argument("--manifest", default=os.environ.get("VISION_ENSEMBLE_MANIFEST", DEFAULT_MANIFEST),
                   help="the ensemble: ensemble.json, a folder holding it, or a Hub repo id (default: the CIFAR-10 "
                        "ensemble shipped in models/cifar10/)")
    p.add_argument("--output", "-o", type=Path, default=Path("predictions.csv"),
                   help="the table: .csv, .jsonl or .parquet (default: predictions.csv)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes per image, most probable first")
    p.add_argument("--probabilities", action="store_true", help="also a column with every class's probability")
    p.add_argument("--path-column", help="the path column of a .csv SOURCE (default: the first of "
                   f"{', '.join(PATH_COLUMNS)})")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --output and classify only the "
                   "files it lacks (after a killed or interrupted run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--runtime", choices=("onnx", "torch"), default="onnx",
                   help="ONNX Runtime (as the Space; ~1.5x faster on a CPU) or eager PyTorch")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the image and its mirror (default: as the manifest says)")
    p.add_argument("--batch-size", default="auto", help="images per batch (auto: as evaluation's, at most "
                   f"{MAX_AUTO_BATCH}, and at most 1/{BATCHES_PER_WORKER} of each decoding worker's share of the files)")
    p.add_argument("--workers", type=int, help="decoding processes (default: one a core; 0 decodes in this one)")
    p.add_argument("--threads", type=int, help="CPU threads for the networks in this process, beside the decoding "
                   "workers (default: one a core)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) > 0):
        parser.error(f"--batch-size {args.batch_size}: give a positive number or auto")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: give at least 1")
        torch.set_num_threads(args.threads)  # the preprocessing's (and --runtime torch's networks'); ORT's below
    try:
        table = Table(args.output, [])
        if table.exists() and not (args.resume or args.overwrite):
            raise InputsError(f"{args.output} exists: --resume continues it, --overwrite replaces it")
        inputs = list_inputs(args.source, args.path_column)
        classifier = Classifier.load(args.manifest, args.runtime, args.tta, args.threads)
        if args.top_k > len(classifier.class_names):
            raise InputsError(f"--top-k {args.top_k}: the ensemble has {len(classifier.class_names)} classes")
        table.columns = record_columns(args.top_k, classifier.class_names, args.probabilities)
        if args.overwrite and not args.resume:
            for path in {table.path, table.stream}:
                path.unlink(missing_ok=True)
        done = table.done() if args.resume else set()
    except (InputsError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    todo = inputs.subset([i for i, name in enumerate(inputs.names) if name not in done])
    notes = [f"{len(done):,} already in {args.output}"] if done else []
    notes += [f"{inputs.hidden:,} hidden file(s) left out"] if inputs.hidden else []
    print(f"{len(todo.names):,} file(s) to classify" + (f" ({'; '.join(notes)})" if notes else ""), file=sys.stderr)
    start, classified, errors = time.perf_counter(), 0, Counter()
    batch_size = None if args.batch_size == "auto" else int(args.batch_size)
    with tqdm(total=len(todo.names), unit="img", desc="predict") as bar:
        for records in classifier.predict_inputs(todo, args.top_k, args.probabilities, batch_size, args.workers):
            table.append(records)
            failed = [r["error"] for r in records if r["error"]]
            errors.update(error.split(" (")[0] for error in failed)  # the reason, without the file's details
            classified += len(records) - len(failed)
            bar.update(len(records))
    table.finish()
    seconds = time.perf_counter() - start
    print(f"classified {classified:,} of {len(todo.names):,} file(s) in {seconds:.1f} s "
          f"({len(todo.names) / max(seconds, 1e-9):.1f} files/s) -> {args.output}", file=sys.stderr)
    if errors:
        print(f"{sum(errors.values()):,} file(s) could not be classified (their rows say why): "
              + "; ".join(f"{n} {reason}" for reason, n in errors.most_common()), file=sys.stderr)
    return 0 if classified or not todo.names else 1


if __name__ == "__main__":
    sys.exit(main())
