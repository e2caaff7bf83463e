"""The teacher of a distilled student: the ensemble's calibrated probabilities on the training images the
student trains on (`train/finetune.py --teacher`).

From an `ensemble.json` its members run once over those images (the ensemble's own `predict`: weights, flip
TTA, temperature) and the result is cached beside the run; from the members' predictions.npz files their
saved training-split probabilities are combined with the weights and temperature of an ensemble.json given
beside them, or with weights and a temperature fitted on the files' validation split, as evaluate.py fits them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import DecodedDataset
from .calibration import apply_temperature, fit_temperature
from .ensemble import Ensemble, fit_weights
from .predictions import PredictionsError, check_same_data, data_fingerprint, load_predictions, split_probabilities


class TeacherError(PredictionsError):
    """A teacher that cannot give targets for these training images, with what to do instead."""


def teacher_probabilities(sources: list[str], data: DecodedDataset, train_indices: np.ndarray, cache_file: Path,
                          device: str | torch.device = "cpu", batch_size: int = 256) -> np.ndarray:
    """(len(train_indices), C) float32 calibrated teacher probabilities, row i for training-split image
    `train_indices[i]`.  `sources`: one ensemble.json (or its folder) and/or members' predictions.npz files."""
    files = [Path(s) for s in sources if str(s).endswith(".npz")]
    manifests = [Path(s) for s in sources if not str(s).endswith(".npz")]
    if len(manifests) > 1:
        raise TeacherError(f"--teacher: give one ensemble.json, not {len(manifests)} ({', '.join(map(str, manifests))})")
    manifest_path = None
    if manifests:
        manifest_path = manifests[0] / "ensemble.json" if manifests[0].is_dir() else manifests[0]
        if not manifest_path.is_file():
            raise TeacherError(f"--teacher {manifests[0]}: no ensemble.json there")
    if files:
        return _from_prediction_files(files, manifest_path, data, train_indices)
    return _from_manifest(manifest_path, data, train_indices, cache_file, device, batch_size)


def _from_manifest(path: Path, data: DecodedDataset, train_indices: np.ndarray, cache_file: Path,
                   device, batch_size: int) -> np.ndarray:
    # The cache is valid for this manifest, these images and this split; delete it after retraining members.
    key = hashlib.sha256(path.read_bytes() + data_fingerprint(data).encode() + data.split_file.name.encode()
                         + np.ascontiguousarray(train_indices, dtype=np.int64).tobytes()).hexdigest()
    if cache_file.exists():
        with np.load(cache_file) as cached:
            if str(cached["key"]) == key:
                return cached["probs"].astype(np.float32)
    ensemble = Ensemble.from_manifest(path, device)
    if ensemble.class_names != data.class_names:
        raise TeacherError(f"--teacher {path}: its classes {ensemble.class_names} differ from the data's {data.class_names}")
    bar = tqdm(total=len(train_indices), desc="teacher on the training split", unit="img")

    def predict(images):
        bar.update(len(images))
        return ensemble.predict(images, batch_size)[0]

    probs = split_probabilities(predict, data.train, train_indices)
    bar.close()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + ".partial.npz")
    np.savez(tmp, key=np.array(key), probs=probs.astype(np.float32))
    tmp.replace(cache_file)
    return probs.astype(np.float32)


def _from_prediction_files(files: list[Path], manifest_path: Path | None, data: DecodedDataset,
                           train_indices: np.ndarray) -> np.ndarray:
    runs = [load_predictions(f) for f in files]
    check_same_data(runs, files)
    first = runs[0]
    for run, path in zip(runs, files):
        if run.train_probs is None:
            raise TeacherError(f"{path} holds no training-split probabilities (written before distillation was "
                               "supported): pass the ensemble's ensemble.json as --teacher to run its members instead")
    if first.split["data_fingerprint"] != data_fingerprint(data) or first.split["split_file"] != data.split_file.name:
        raise TeacherError(f"{files[0]} was predicted on other data or another train/val split ({first.split}); "
                           "train the student with the members' --data-dir, --seed and --val-size")
    if first.class_names != data.class_names:
        raise TeacherError(f"{files[0]}: classes {first.class_names} differ from the data's {data.class_names}")
    if manifest_path is not None:  # the weights, flip TTA and temperature evaluate.py chose
        manifest = json.loads(manifest_path.read_text())
        weight_of = {m["source"]: m.get("weight", 1 / len(manifest["members"])) for m in manifest["members"]}
        missing = [run.source for run in runs if run.source not in weight_of]
        if missing or len(runs) != len(weight_of):
            raise TeacherError(f"{manifest_path} names the members {sorted(weight_of)}, the predictions files "
                               f"{sorted(r.source for r in runs)}: give one file per member of that ensemble")
        weights = np.array([weight_of[run.source] for run in runs])
        tta_flip, temperature = manifest.get("tta_flip", False), manifest.get("temperature", 1.0)
    else:  # evaluate.py's fit (without --tta), on the files' validation split
        tta_flip = False
        val_member = np.stack([run.val_probs for run in runs])
        weights = fit_weights(val_member, first.val_labels)
        temperature = fit_temperature(np.tensordot(weights, val_member, axes=1), first.val_labels)
    member_probs = np.stack([_rows(run, path, train_indices, tta_flip) for run, path in zip(runs, files)])
    return apply_temperature(np.tensordot(weights, member_probs, axes=1), temperature).astype(np.float32)


def _rows(run, path: Path, train_indices: np.ndarray, tta_flip: bool) -> np.ndarray:
    """The run's probabilities for `train_indices`, which must all be among the images it predicted."""
    saved = run.train_indices
    position = np.minimum(np.searchsorted(saved, train_indices), len(saved) - 1)
    covered = saved[position] == train_indices
    if not covered.all():
        raise TeacherError(f"{path} has probabilities for {len(saved)} training images, not for {int((~covered).sum())} "
                           "of the student's: give the student the members' --max-train-samples and --seed, or pass "
                           "the ensemble.json as --teacher to run the members over the student's images")
    return (run.train_probs_flip if tta_flip else run.train_probs)[position].astype(np.float32)
