"""Prediction files: a training run's best-epoch softmax probabilities on the validation and test splits, with
and without flip TTA, in one small `predictions.npz` beside the run; also, in float16, on the training images
it trained on (the soft targets a student distils from, `train/finetune.py --teacher`).

Model weights are too large to bring back from a GPU machine; these files are enough to build the whole
ensemble report (`evaluation/evaluate.py --predictions ...`) anywhere, without weights or the dataset.  The
probabilities come from the exported `best/` folder through `Member.load` + `Member.probabilities`, the same
code `evaluate.py --models` runs, so both give the same report.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data import DecodedDataset, ImageArrays, subset_indices
from ..model import Member
from .report import MemberPredictions

FORMAT_VERSION = 1
PROBABILITY_ARRAYS = ("val_probs", "val_probs_flip", "test_probs", "test_probs_flip")
TRAIN_ARRAYS = ("train_indices", "train_probs", "train_probs_flip")  # optional: files of older runs lack them


class PredictionsError(ValueError):
    """A predictions file that cannot be read, or files that do not describe the same data."""


def evaluation_split(arrays: ImageArrays, max_samples: int | None, seed: int) -> ImageArrays:
    """A split, or its seeded `max_samples` subset (as training's val): a view, no pixels read."""
    keep = subset_indices(len(arrays), max_samples, seed)
    return arrays if keep is None else arrays.subset(keep)


def evaluation_batch(arrays: ImageArrays, max_samples: int | None, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 NCHW images (in RAM unless the memory map holds exactly them) and labels of `evaluation_split`."""
    arrays = evaluation_split(arrays, max_samples, seed)
    return torch.from_numpy(arrays.images).permute(0, 3, 1, 2), arrays.labels


@dataclass
class RunPredictions:
    """The content of one predictions file."""

    source: str            # the Hub repo id the member would be pushed to (its name in ensemble.json)
    data_config: dict      # the member's preprocessing
    class_names: list[str]
    split: dict            # which images: data fingerprint, split file, seed, eval subset
    metrics: dict          # the best epoch's validation metrics
    training_args: dict
    device: str            # where the probabilities were computed
    data_dir: str
    val_labels: np.ndarray
    test_labels: np.ndarray
    val_probs: np.ndarray
    val_probs_flip: np.ndarray
    test_probs: np.ndarray
    test_probs_flip: np.ndarray
    train_indices: np.ndarray | None = None    # which training-split images (files before distillation: none)
    train_probs: np.ndarray | None = None      # float16, (len(train_indices), C)
    train_probs_flip: np.ndarray | None = None

    def member(self, tta_flip: bool) -> MemberPredictions:
        if tta_flip:
            return MemberPredictions(self.source, self.data_config, self.val_probs_flip, self.test_probs_flip)
        return MemberPredictions(self.source, self.data_config, self.val_probs, self.test_probs)


def data_fingerprint(data: DecodedDataset) -> str:
    """The decoded cache's fingerprint of its source: prediction files made from other data do not match it."""
    return json.loads((data.cache_dir / "meta.json").read_text())["fingerprint"]


def split_probabilities(predict, arrays: ImageArrays, indices: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """`predict(uint8 NCHW batch) -> (n, C) probabilities` over `arrays[indices]`, read `chunk` images at a time
    (a large training split never sits in memory whole)."""
    return np.concatenate([np.asarray(predict(torch.from_numpy(arrays.gather(indices[start:start + chunk]))
                                              .permute(0, 3, 1, 2)))
                           for start in range(0, len(indices), chunk)])


def prediction_images(data: DecodedDataset, cfg: TrainConfig, train_images: int) -> int:
    """How many images `save_predictions` predicts, each with and without flip: the training images the run
    trained on (a student's soft targets; 45,000 of CIFAR-10's 55,000), val and the same-sized test subset;
    none without a test split."""
    if data.test is None:
        return 0
    return train_images + sum(min(len(split), cfg.max_eval_samples or len(split)) for split in (data.val, data.test))


def seconds_per_predicted_image(member: Member, images: torch.Tensor, batch_size: int) -> float:
    """The pace of `save_predictions` per image (with and without flip), timed on `images` (uint8 NCHW) through
    the same `Member.probabilities`; for `--time-limit`, which keeps that time free at the end of a run."""
    # One-off costs are not the pace: oneDNN's kernels and cuDNN's autotuning for each new batch shape (with three
    # trainings starting at once on an H200, efficientnet_b0's first batch of 512 took 7.7 s, and the run kept 451 s
    # of a 6-minute limit for its predictions; BENCHMARKS.md), so the timed shape runs once untimed.
    member.probabilities(images, False, batch_size)
    start = time.perf_counter()
    for flip in (False, True):
        member.probabilities(images, flip, batch_size)
    return (time.perf_counter() - start) / len(images)


def save_predictions(path: str | Path, model_folder: str | Path, data: DecodedDataset, cfg: TrainConfig,
                     source: str, device: str | torch.device = "cpu", batch_size: int = 500) -> Path | None:
    """Write `path` (.npz) from the exported `model_folder`, on the split training validated on (its
    `--max-eval-samples` subset) and the same-sized seeded subset of test, as `evaluate.py` would pick.
    Data without a test split has nothing to report on: then nothing is written and None returned."""
    if data.test is None:
        return None
    member = Member.load(str(model_folder), device=device)
    val_images, val_labels = evaluation_batch(data.val, cfg.max_eval_samples, cfg.split_seed)
    test_images, test_labels = evaluation_batch(data.test, cfg.max_eval_samples, cfg.split_seed)
    probs = {f"{split}_probs{'_flip' if flip else ''}": member.probabilities(images, flip, batch_size).numpy()
             for split, images in (("val", val_images), ("test", test_images)) for flip in (False, True)}
    train_keep = subset_indices(len(data.train), cfg.max_train_samples, cfg.seed)  # the images the run trained on
    train_indices = np.arange(len(data.train)) if train_keep is None else train_keep
    for flip in (False, True):
        probs[f"train_probs{'_flip' if flip else ''}"] = split_probabilities(
            lambda images, flip=flip: member.probabilities(images, flip, batch_size), data.train, train_indices).astype(np.float16)
    device = torch.device(device)
    meta = {
        "format": FORMAT_VERSION, "source": source, "data_config": member.data_config,
        "class_names": member.class_names, "data_dir": str(cfg.data_dir),
        "split": {"data_fingerprint": data_fingerprint(data),
                  "split_file": data.split_file.name, "seed": cfg.split_seed, "val_size": cfg.val_size,
                  "max_eval_samples": cfg.max_eval_samples},
        "metrics": json.loads((Path(model_folder) / "metrics.json").read_text()),
        "training_args": asdict(cfg),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".partial.npz")
    # float32 keeps the report identical to a folder evaluation; CIFAR-10's 4 x 15,000 x 10 is 2.4 MB, its
    # training split's 2 x 45,000 x 10 in float16 (soft targets need no more) 1.8 MB.
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta, default=str)), val_labels=val_labels,
                        test_labels=test_labels, train_indices=train_indices, **probs)
    tmp.replace(path)
    return path


def load_predictions(path: str | Path) -> RunPredictions:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {name: npz[name] for name in ("val_labels", "test_labels", *PROBABILITY_ARRAYS)}
            arrays.update({name: npz[name] for name in TRAIN_ARRAYS if name in npz.files})
    except FileNotFoundError:
        raise PredictionsError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError) as exc:  # not an .npz, or one without our arrays
        raise PredictionsError(f"{path}: not a predictions file written by train/finetune.py ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise PredictionsError(f"{path}: predictions format {meta.get('format')}, this code reads {FORMAT_VERSION}")
    return RunPredictions(**{k: meta[k] for k in ("source", "data_config", "class_names", "split", "metrics",
                                                  "training_args", "device", "data_dir")}, **arrays)


def check_same_data(runs: list[RunPredictions], paths: list[str | Path]) -> None:
    """Members can only be ensembled on the same images, labels and classes."""
    first, first_path = runs[0], paths[0]
    for run, path in zip(runs[1:], paths[1:]):
        for what, ours, theirs in (("class names", run.class_names, first.class_names),
                                   ("split", run.split, first.split)):
            if ours != theirs:
                raise PredictionsError(f"{path} and {first_path} differ in {what}: {ours} != {theirs}")
        for what in ("val_labels", "test_labels"):
            if not np.array_equal(getattr(run, what), getattr(first, what)):
                raise PredictionsError(f"{path} and {first_path} have different {what.replace('_', ' ')}: "
                                       "they were not predicted on the same images")
    sources = [run.source for run in runs]
    if len(set(sources)) < len(sources):
        raise PredictionsError(f"two predictions files name the same member ({', '.join(sources)}); "
                               "give each run its own --hub-repo-id")
