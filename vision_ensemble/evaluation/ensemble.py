"""Ensemble: weighted soft voting of members' probabilities (weights fitted on the validation split), then
temperature scaling; the uncertainty rule; the `ensemble.json` manifest the app loads.  The same `predict`
serves evaluation and the app; `SoftVote` is that computation as one differentiable, exportable module.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import UNCERTAINTY_FLAGGED_ACCURACY, UNCERTAINTY_MIN_AGREEMENT
from ..model import Member, ModelError
from .calibration import apply_temperature, nll
from .conformal import ConformalRule

MANIFEST_VERSION = 1


@dataclass
class UncertaintyRule:
    """When to tell a person the ensemble is unsure: the calibrated top probability is under
    `min_confidence`, or fewer than `min_agreement` of the members (by count) share the ensemble's top class.
    The evaluation chooses the numbers on the validation split and stores them in ensemble.json."""

    min_confidence: float = 0.0
    min_agreement: float = 0.0

    def flags(self, probs: np.ndarray, member_probs: np.ndarray) -> np.ndarray:
        """(N,) bool for calibrated probabilities (N, C) and member probabilities (M, N, C)."""
        top = probs.argmax(axis=1)
        agreement = (member_probs.argmax(axis=2) == top[None]).mean(axis=0)
        return (probs.max(axis=1) < self.min_confidence) | (agreement < self.min_agreement)

    @classmethod
    def choose(cls, probs: np.ndarray, labels: np.ndarray, max_flagged_accuracy: float = UNCERTAINTY_FLAGGED_ACCURACY,
               min_agreement: float = UNCERTAINTY_MIN_AGREEMENT) -> "UncertaintyRule":
        """The rule for validation probabilities: flag a prediction when fewer than `min_agreement` of the
        members agree with it, or when its calibrated probability is under the highest cut-off at which the
        validation predictions below it are right at most `max_flagged_accuracy` of the time."""
        confidence = probs.max(axis=1)
        order = np.argsort(confidence, kind="stable")
        correct = (probs.argmax(axis=1) == labels)[order]
        accuracy_below = np.cumsum(correct) / np.arange(1, len(order) + 1)  # of the k least confident, k = 1..N
        low = np.flatnonzero(accuracy_below <= max_flagged_accuracy)
        if len(low) == 0:
            return cls(0.0, min_agreement)
        k = low[-1] + 1  # flag the k least confident: cut halfway between the k-th and the next
        cut = 1.0 if k == len(order) else (confidence[order[k - 1]] + confidence[order[k]]) / 2
        return cls(float(cut), min_agreement)


def manifest_dict(class_names: list[str], members: list[tuple[str, float, dict]], temperature: float,
                  tta_flip: bool, uncertainty: UncertaintyRule, conformal: ConformalRule | None = None) -> dict:
    """The `ensemble.json` content; members as (source, weight, preprocessing config)."""
    return {"version": MANIFEST_VERSION, "class_names": list(class_names), "temperature": float(temperature),
            "tta_flip": tta_flip, "uncertainty": asdict(uncertainty),
            **({"conformal": conformal.to_dict()} if conformal is not None else {}),
            "members": [{"source": source, "weight": float(weight), "preprocessing": data_config}
                        for source, weight, data_config in members]}


class SoftVote(torch.nn.Module):
    """`Ensemble.predict` as one differentiable, exportable module: each member's own preprocessing and
    network, its softmax (averaged with the mirror image under flip TTA, in one batch as `Member.probabilities`
    does), the weighted mean, then temperature scaling (`apply_temperature` in torch).

    Input: an NCHW batch that `input_scale` brings to the 0-255 scale (uint8 pixels: 1; [0, 1] pixels: 255).
    Output: calibrated log-probabilities.  Used by the FGSM/PGD attacks and the single-graph ONNX export.
    """

    def __init__(self, members: list[Member], weights, temperature: float = 1.0, tta_flip: bool = False,
                 input_scale: float = 1.0):
        super().__init__()
        self.networks = torch.nn.ModuleList(m.model for m in members)
        self.transforms = [m.transform for m in members]
        self.weights = [float(w) for w in weights]
        self.temperature, self.tta_flip, self.input_scale = float(temperature), tta_flip, float(input_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() * self.input_scale if self.input_scale != 1.0 else images.float()
        probs = 0
        for network, transform, weight in zip(self.networks, self.transforms, self.weights):
            x = transform(pixels)
            if self.tta_flip:
                p = network(torch.cat([x, x.flip(3)])).float().softmax(dim=1)
                p = p.reshape(2, -1, p.shape[1]).mean(dim=0)
            else:
                p = network(x).float().softmax(dim=1)
            probs = probs + weight * p
        return torch.log_softmax(probs.clamp(1e-12, 1.0).log() / self.temperature, dim=1)


class Ensemble:
    """Weighted soft voting of member probabilities, then temperature scaling of the log-probabilities."""

    def __init__(self, members: list[Member], weights=None, temperature: float = 1.0, tta_flip: bool = False,
                 uncertainty: UncertaintyRule | None = None, conformal: ConformalRule | None = None):
        if not members:
            raise ModelError("an ensemble needs at least one member")
        reference = members[0].class_names
        for m in members[1:]:
            if m.class_names != reference:
                raise ModelError(f"member '{m.source}' has classes {m.class_names[:5]}... but member "
                                 f"'{members[0].source}' has {reference[:5]}...: members must share one class list")
        self.members = members
        self.class_names = list(reference)
        self.weights = np.full(len(members), 1 / len(members)) if weights is None else np.asarray(weights, float)
        self.temperature = float(temperature)
        self.tta_flip = tta_flip
        self.uncertainty = uncertainty or UncertaintyRule()
        self.conformal = conformal  # the calibrated prediction-set rule; None in manifests written before it
        # Called with (member source, seconds) after each member's part of a prediction: the server's /metrics.
        self.member_timer: Callable[[str, float], None] | None = None

    @property
    def source_size(self) -> tuple[int, int]:
        """(height, width) an image is decoded to before the members' own preprocessing (`load_rgb(..., size=)`):
        the largest resize of any member (timm's eval geometry: shorter side to input / crop_pct), as a centred
        square, so every member's resize and centre crop keeps the part of the photo it would keep of the
        original.  A 12-MP photo then costs a draft-mode decode and holds kilobytes, not 36 MB, in a queue."""
        side = max(math.floor(max(m.data_config["input_size"][-2:]) / float(m.data_config.get("crop_pct") or 1.0))
                   for m in self.members)
        return side, side

    def use_onnxruntime(self, folder: str | Path, threads: int | None = None) -> None:
        for member in self.members:
            member.use_onnxruntime(folder, threads)

    def soft_vote(self, input_scale: float = 1.0) -> SoftVote:
        return SoftVote(self.members, self.weights, self.temperature, self.tta_flip, input_scale)

    def member_probabilities(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """(members, N, classes) probabilities for a uint8 NCHW batch."""
        probs = []
        for m in self.members:
            start = time.perf_counter()
            probs.append(m.probabilities(images, self.tta_flip, batch_size).numpy())
            if self.member_timer is not None:
                self.member_timer(m.source, time.perf_counter() - start)
        return np.stack(probs)

    def combine(self, member_probs: np.ndarray, calibrated: bool = True) -> np.ndarray:
        probs = np.tensordot(self.weights, member_probs, axes=1)
        return apply_temperature(probs, self.temperature) if calibrated else probs

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated ensemble probabilities (N, C), member probabilities (M, N, C))."""
        member_probs = self.member_probabilities(images, batch_size)
        return self.combine(member_probs), member_probs

    # --- the manifest ---------------------------------------------------------------------------------
    def manifest(self) -> dict:
        return manifest_dict(self.class_names, [(m.source, w, m.data_config) for m, w in zip(self.members, self.weights)],
                             self.temperature, self.tta_flip, self.uncertainty, self.conformal)

    def save_manifest(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.manifest(), indent=2))
        return path

    @classmethod
    def from_manifest(cls, path: str | Path, device: str | torch.device = "cpu") -> "Ensemble":
        """Load an `ensemble.json`; members given as folders are relative to the manifest's folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "ensemble.json"
        try:
            manifest = json.loads(path.read_text())
            members = manifest["members"]
            conformal = ConformalRule(**manifest["conformal"]) if "conformal" in manifest else None
        except FileNotFoundError:
            raise ModelError(f"no ensemble manifest at {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: not a valid ensemble manifest ({exc})") from None
        loaded = [Member.load(m["source"], path.parent, device) for m in members]
        return cls(loaded, [m.get("weight", 1 / len(members)) for m in members], manifest.get("temperature", 1.0),
                   manifest.get("tta_flip", False), UncertaintyRule(**manifest.get("uncertainty", {})), conformal)


def fit_weights(member_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Soft-voting weights on the simplex (softmax-parameterised) minimising the validation NLL of the mix after
    temperature scaling, fitted jointly with the temperature (the weights alone favoured the more confident member,
    not the more accurate one: label-smoothed CIFAR members are under-confident, and a 90.3%-val member got weight
    0 beside an 89.96% one)."""
    from scipy.optimize import minimize  # not at import: training and the Space import this module and never fit
    m = member_probs.shape[0]
    if m == 1:
        return np.ones(1)

    def loss(params):
        z, log_t = params[:m], params[m]
        w = np.exp(z - z.max())
        return nll(apply_temperature(np.tensordot(w / w.sum(), member_probs, axes=1), np.exp(log_t)), labels)

    z = minimize(loss, np.zeros(m + 1), method="L-BFGS-B").x[:m]
    w = np.exp(z - z.max())
    return w / w.sum()
