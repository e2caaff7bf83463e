"""One prediction path for the Space's Classify tab, the JSON API and batch prediction: the same input checks
and messages, the same top-k, member answers, prediction set, uncertainty hint, model version and timing.

`decode_upload` turns an uploaded file into pixels or raises `InputError` carrying the HTTP status the API
answers with (the UI shows the same message); `predict_batch` runs the ensemble on a batch (`predict_image`
on one image: the server runs it in a slot of its admission, serving/admission.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..config import DEFAULT_TOP_K, MAX_UPLOAD_BYTES
from ..evaluation.conformal import ranked_set, set_words
from ..evaluation.ensemble import Ensemble
from ..images import ImageError, UnsupportedImageError, load_rgb

_NUMBER_WORDS = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve".split()))


class InputError(ValueError):
    """An upload that cannot be classified: `status` is the HTTP answer (400, 413, 415), the message is for a person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MB" if n_bytes >= 2**20 else f"{n_bytes:,} bytes"


def check_upload_size(n_bytes: int, limit: int = MAX_UPLOAD_BYTES) -> None:
    if n_bytes > limit:
        raise InputError(413, f"The file is larger than {size_text(limit)}.")
    if n_bytes == 0:
        raise InputError(400, "Could not use this file: the file is empty.")


def upload_size(upload: bytes | str | Path | BinaryIO) -> int:
    if isinstance(upload, bytes):
        return len(upload)
    if isinstance(upload, (str, Path)):
        return os.path.getsize(upload)
    size = upload.seek(0, os.SEEK_END)
    upload.seek(0)
    return size


def decode_upload(upload: bytes | str | Path | BinaryIO, size: tuple[int, int] | None = None,
                  limit: int = MAX_UPLOAD_BYTES) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an uploaded file (its bytes, its path, or the open file: read as it is decoded)
    resized to cover `size` and centre-cropped, as `load_rgb` (the ensemble's `source_size`), or InputError: 413 too
    large, 415 not an image, 400 corrupt, empty or too many pixels."""
    check_upload_size(upload_size(upload), limit)
    try:
        return load_rgb(upload, size=size)
    except ImageError as exc:
        raise InputError(415 if isinstance(exc, UnsupportedImageError) else 400, f"Could not use this file: {exc}.") from None


# --- the answer -----------------------------------------------------------------------------------------

class LabelProbability(BaseModel):
    label: str
    probability: float = Field(description="calibrated probability (members' weighted mean, temperature-scaled)")


class MemberAnswer(BaseModel):
    source: str = Field(description="the member as named in ensemble.json (a Hub repo id or a folder)")
    label: str = Field(description="this member's top class")
    probability: float = Field(description="this member's (uncalibrated) probability of its top class")
    agrees: bool = Field(description="whether its top class is the ensemble's")
    top_k: list[LabelProbability]


class Prediction(BaseModel):
    top_k: list[LabelProbability] = Field(description="the ensemble's k most probable classes, most probable first")
    members: list[MemberAnswer]
    prediction_set: list[str] | None = Field(description=(
        "the classes the ensemble cannot rule out, most probable first: sets built this way hold the true class for "
        "`coverage` of images like the validation images (conformal prediction); null if ensemble.json has no "
        "calibrated set rule"))
    coverage: float | None = Field(description="the share of images whose prediction set holds the true class (0.9)")
    uncertain: bool = Field(description="the ensemble's uncertainty rule fired (low confidence or members disagree)")
    hint: str | None = Field(description="a plain-words warning when `uncertain`, else null")
    model_version: str = Field(description="hash of ensemble.json's content and the members' weights")
    latency_ms: float = Field(description="time spent in the ensemble (preprocessing and networks), milliseconds")


def uncertainty_hint(num_classes: int, prediction_set: list[str] | None = None, coverage: float | None = None) -> str:
    """The warning; with a prediction set of several classes, also which ones it cannot tell apart."""
    count = _NUMBER_WORDS.get(num_classes, str(num_classes))
    hint = f"The ensemble is unsure: this may not be one of the {count} classes."
    if prediction_set and len(prediction_set) > 1:
        hint += f" At {coverage:.0%} coverage it cannot rule out {set_words(prediction_set)}."
    return hint


def _top(probs: np.ndarray, names: list[str], k: int) -> list[LabelProbability]:
    return [LabelProbability(label=names[i], probability=float(probs[i])) for i in np.argsort(-probs)[:k]]


def predict_batch(ensemble: Ensemble, images: torch.Tensor, top_k: int = DEFAULT_TOP_K,
                  model_version: str = "") -> list[Prediction]:
    """The ensemble's answers for a uint8 NCHW batch (images decoded to `ensemble.source_size`): the one
    prediction path of the Space, the JSON API, `vision-ensemble predict` and the Python API. `latency_ms` is
    the batch's time divided among its images."""
    start = time.perf_counter()
    probs, member_probs = ensemble.predict(images)
    latency_ms = (time.perf_counter() - start) * 1000 / max(1, len(images))
    names, rule = ensemble.class_names, ensemble.conformal
    uncertain = ensemble.uncertainty.flags(probs, member_probs)
    coverage = rule.coverage if rule is not None else None
    answers = []
    for i, p in enumerate(probs):
        top = int(p.argmax())
        prediction_set = ranked_set(rule, p, names) if rule is not None else None
        members = []
        for member, q in zip(ensemble.members, member_probs[:, i]):
            best = int(q.argmax())
            members.append(MemberAnswer(source=member.source, label=names[best], probability=float(q[best]),
                                        agrees=best == top, top_k=_top(q, names, top_k)))
        answers.append(Prediction(
            top_k=_top(p, names, top_k), members=members, prediction_set=prediction_set, coverage=coverage,
            uncertain=bool(uncertain[i]),
            hint=uncertainty_hint(len(names), prediction_set, coverage) if uncertain[i] else None,
            model_version=model_version, latency_ms=round(latency_ms, 2)))
    return answers


def predict_image(ensemble: Ensemble, pixels: np.ndarray, top_k: int = DEFAULT_TOP_K,
                  model_version: str = "") -> Prediction:
    """The ensemble's answer for one (H, W, 3) uint8 image (the server runs it in one of its admission's slots)."""
    return predict_batch(ensemble, torch.from_numpy(pixels).permute(2, 0, 1)[None], top_k, model_version)[0]


# --- what is being served -----------------------------------------------------------------------------

def model_version(ensemble: Ensemble) -> str:
    """12 hex digits identifying what answers: the manifest's content (sources, weights, temperature,
    preprocessing, uncertainty rule) and every member's weights, so retrained weights behind the same
    source names get a new version."""
    digest = hashlib.sha256(json.dumps(ensemble.manifest(), sort_keys=True).encode())
    for member in ensemble.members:
        for name, tensor in member.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def package_versions() -> dict[str, str | None]:
    versions = {}
    for package in ("vision-ensemble", "timm", "torch", "gradio", "onnxruntime", "fastapi"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:  # e.g. the project run from a checkout, not installed
            versions[package] = None
    return versions
