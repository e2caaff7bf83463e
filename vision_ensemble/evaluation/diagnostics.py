"""`evaluation/evaluate.py --diagnose`: where the ensemble goes wrong, and how easily it is pushed there.

- the most confident errors on the test split, with Grad-CAM for the true and the predicted class from the
  highest-weight member (error_gallery.png);
- the top confusions (true -> predicted pairs, with counts) from the report's confusion matrix;
- accuracy of each member and of the ensemble under Captum's FGSM and PGD (`captum.robust`) at L-inf radii
  of 0 to 8/255 in pixel space, on a seeded test subset (robustness.png).

Each network is attacked through its own preprocessing: `ensemble.SoftVote` takes [0, 1] pixels at the
data's resolution and resizes and normalises inside, so one perturbation of the pixels reaches every member,
and the ensemble is attacked through its differentiable soft vote.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import ATTACK_EPSILONS_255, DEFAULT_ATTACK_SAMPLES, GALLERY_ERRORS, PGD_STEPS, TOP_CONFUSIONS
from ..data import subset_indices
from ..model import Member
from ..plots import error_gallery_figure, robustness_figure, save
from .ensemble import Ensemble, SoftVote
from .explain import class_heatmaps, overlay


def _per_sample_nll(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(log_probs, labels, reduction="none")


@torch.no_grad()
def _correct(model: SoftVote, pixels: torch.Tensor, labels: torch.Tensor) -> int:
    return int((model(pixels).argmax(dim=1) == labels).sum())


def attack_accuracies(model: SoftVote, pixels: torch.Tensor, labels: torch.Tensor, epsilons: list[float],
                      pgd_steps: int = PGD_STEPS, batch_size: int = 64, progress=None) -> dict[str, list[float]]:
    """Top-1 (%) under untargeted FGSM and PGD (L-inf, no random start) at each radius; radius 0 is clean."""
    from captum.robust import FGSM, PGD  # here: only --diagnose pays for importing Captum

    fgsm = FGSM(model, _per_sample_nll, lower_bound=0.0, upper_bound=1.0)
    pgd = PGD(model, _per_sample_nll, lower_bound=0.0, upper_bound=1.0)
    # Captum leaves pixels whose gradient is under 1e-6 alone; a confident, correct prediction has gradients that
    # small everywhere, so with the default such images could never be attacked.
    fgsm.zero_thresh = pgd.fgsm.zero_thresh = 0.0
    correct = {"fgsm": np.zeros(len(epsilons)), "pgd": np.zeros(len(epsilons))}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Input Tensor 0 did not already require gradients")  # Captum sets it
        for start in range(0, len(pixels), batch_size):
            x, y = pixels[start:start + batch_size], labels[start:start + batch_size]
            for i, eps in enumerate(epsilons):
                if eps == 0:
                    adversarial = {"fgsm": x, "pgd": x}
                else:
                    adversarial = {"fgsm": fgsm.perturb(x, eps, y),
                                   "pgd": pgd.perturb(x, radius=eps, step_size=2.5 * eps / pgd_steps,
                                                      step_num=pgd_steps, target=y)}
                for attack, x_adv in adversarial.items():
                    correct[attack][i] += _correct(model, x_adv, y)
                if progress is not None:
                    progress.update(1)
    return {attack: (c / len(pixels) * 100).tolist() for attack, c in correct.items()}


def robustness(ensemble: Ensemble, images: torch.Tensor, labels: np.ndarray, epsilons_255=ATTACK_EPSILONS_255,
               pgd_steps: int = PGD_STEPS, batch_size: int = 64) -> dict:
    """FGSM and PGD accuracy of each member and of the ensemble on uint8 `images`, radii in 1/255 steps."""
    device = next(ensemble.members[0].model.parameters()).device
    pixels, targets = images.to(device).float() / 255, torch.as_tensor(labels, device=device)
    models = {m.source: SoftVote([m], [1.0], tta_flip=ensemble.tta_flip, input_scale=255) for m in ensemble.members}
    models["ensemble"] = ensemble.soft_vote(input_scale=255)
    epsilons = [e / 255 for e in epsilons_255]
    start = time.perf_counter()
    result = {"fgsm": {}, "pgd": {}}
    steps = len(models) * len(epsilons) * -(-len(pixels) // batch_size)
    with tqdm(total=steps, desc="FGSM/PGD", unit="batch") as progress:
        for name, model in models.items():
            accuracies = attack_accuracies(model.eval(), pixels, targets, epsilons, pgd_steps, batch_size, progress)
            for attack, values in accuracies.items():
                result[attack][name] = values
    return {"samples": len(pixels), "epsilons_255": list(epsilons_255), "pgd_steps": pgd_steps,
            "pgd_step_size": "2.5 * epsilon / steps", **result, "seconds": time.perf_counter() - start}


def top_confusions(matrix: np.ndarray, class_names: list[str], count: int = TOP_CONFUSIONS) -> list[dict]:
    """The most frequent (true, predicted) pairs with true != predicted, most frequent first."""
    matrix = np.asarray(matrix).copy()
    np.fill_diagonal(matrix, 0)
    order = np.argsort(-matrix, axis=None, kind="stable")[:count]
    return [{"true": class_names[i], "predicted": class_names[j], "count": int(matrix[i, j])}
            for i, j in zip(*np.unravel_index(order, matrix.shape)) if matrix[i, j] > 0]


def confident_errors(probs: np.ndarray, labels: np.ndarray, count: int = GALLERY_ERRORS) -> np.ndarray:
    """Indices of the wrong predictions with the highest calibrated probability, most confident first."""
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    return wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:count]


def error_gallery(member: Member, images: torch.Tensor, labels: np.ndarray, probs: np.ndarray, indices: np.ndarray,
                  class_names: list[str], path: Path) -> list[dict]:
    """error_gallery.png: each error's image, and `member`'s Grad-CAM for the true and for the predicted class."""
    rows, entries = [], []
    for i in indices:
        true, predicted = int(labels[i]), int(probs[i].argmax())
        image = images[i].permute(1, 2, 0).numpy()
        heat_true, heat_predicted = class_heatmaps(member.model, member.transform, images[i], [true, predicted])
        rows.append((image, overlay(image, heat_true), overlay(image, heat_predicted),
                     f"#{i}: true {class_names[true]}", f"Grad-CAM: {class_names[true]}",
                     f"predicted {class_names[predicted]} ({probs[i, predicted]:.2f})"))
        entries.append({"index": int(i), "true": class_names[true], "predicted": class_names[predicted],
                        "probability": float(probs[i, predicted])})
    save(error_gallery_figure(rows, f"Most confident errors; Grad-CAM of {member.source}"), path)
    return entries


def diagnose(report: dict, ensemble: Ensemble, images: torch.Tensor, labels: np.ndarray, probs: np.ndarray,
             output_dir: Path, attack_samples: int = DEFAULT_ATTACK_SAMPLES, pgd_steps: int = PGD_STEPS,
             seed: int = 0) -> list[Path]:
    """Write error_gallery.png and robustness.png, add the "diagnostics" entry to `report`, rewrite report.json;
    return the figures' paths.

    `images` (uint8 NCHW), `labels` and calibrated `probs` are the test split `report` was measured on.
    """
    explained = ensemble.members[int(np.argmax(ensemble.weights))]
    worst = confident_errors(probs, labels)
    errors = error_gallery(explained, images, labels, probs, worst, ensemble.class_names,
                           output_dir / "error_gallery.png") if len(worst) else []
    keep = subset_indices(len(labels), attack_samples, seed)
    keep = np.arange(len(labels)) if keep is None else keep
    attacks = {**robustness(ensemble, images[torch.from_numpy(keep)], labels[keep], pgd_steps=pgd_steps), "seed": seed}
    save(robustness_figure(attacks), output_dir / "robustness.png")
    report["diagnostics"] = {
        "gallery": "error_gallery.png" if errors else None, "gallery_member": explained.source,
        "confident_errors": errors,
        "top_confusions": top_confusions(report["confusion_matrix"], ensemble.class_names),
        "robustness_plot": "robustness.png", "robustness": attacks}
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    return [output_dir / name for name in (report["diagnostics"]["gallery"], "robustness.png") if name]
