"""The evaluation report from member probabilities alone: soft-voting weights, temperature and the
uncertainty rule fitted on the validation split, then accuracy, calibration, per-class numbers and how often
the rule fires on the test split, the figures, and the `ensemble.json` manifest.

Working from probabilities (not models) lets the same report come from loaded model folders or from the
prediction files a training run leaves behind; only `out_of_domain_flags` runs the models, on a few photos.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DEFAULT_CONFORMAL_SCORE, DEFAULT_COVERAGE, UNCERTAINTY_FLAGGED_ACCURACY
from ..plots import confusion_matrix_figure, coverage_figure, reliability_figure, save
from .calibration import (apply_temperature, calibration_bins, expected_calibration_error, fit_temperature, nll,
                          topk_accuracy)
from .conformal import ConformalRule, calibrate, calibration_problem, conformal_summary, ranked_set
from .ensemble import Ensemble, UncertaintyRule, fit_weights, manifest_dict


@dataclass
class MemberPredictions:
    """One member's softmax probabilities on the validation and test splits, and how it preprocesses."""

    source: str           # a Hub repo id or a folder, as the manifest will name it
    data_config: dict     # input_size, mean, std, interpolation, crop_pct
    val_probs: np.ndarray   # (N_val, C)
    test_probs: np.ndarray  # (N_test, C)


@dataclass
class EnsembleEvaluation:
    report: dict
    weights: np.ndarray
    temperature: float
    uncertainty: UncertaintyRule
    test_uncalibrated: np.ndarray  # (N_test, C) weighted soft vote before temperature scaling
    test_calibrated: np.ndarray
    conformal: ConformalRule | None = None


def evaluate_ensemble(members: list[MemberPredictions], val_labels: np.ndarray, test_labels: np.ndarray,
                      class_names: list[str], tta_flip: bool, equal_weights: bool = False,
                      context: dict | None = None,
                      flagged_accuracy: float = UNCERTAINTY_FLAGGED_ACCURACY, coverage: float = DEFAULT_COVERAGE,
                      conformal_score: str = DEFAULT_CONFORMAL_SCORE) -> EnsembleEvaluation:
    """Fit weights (unless `equal_weights`), temperature, the uncertainty rule (`UncertaintyRule.choose`,
    with `flagged_accuracy`) and the conformal prediction sets (`coverage`, `conformal_score`) on val; measure
    everything, how often the rule fires and how the sets cover, on test."""
    from sklearn.metrics import classification_report, confusion_matrix  # 1.5 s to import: only for a report
    val_member = np.stack([m.val_probs for m in members])
    test_member = np.stack([m.test_probs for m in members])
    weights = np.full(len(members), 1 / len(members)) if equal_weights else fit_weights(val_member, val_labels)
    val_raw = np.tensordot(weights, val_member, axes=1)
    temperature = fit_temperature(val_raw, val_labels)
    val_calibrated = apply_temperature(val_raw, temperature)
    raw = np.tensordot(weights, test_member, axes=1)
    calibrated = apply_temperature(raw, temperature)
    predicted = calibrated.argmax(axis=1)
    uncertainty = UncertaintyRule.choose(val_calibrated, val_labels, flagged_accuracy)
    flagged = uncertainty.flags(calibrated, test_member)
    # Too few validation images for the level leave the sets out (said in the report), not the whole evaluation.
    skipped = calibration_problem(len(val_labels), coverage, conformal_score)
    conformal, calibration_scores = (None, None) if skipped else calibrate(val_calibrated, val_labels, coverage,
                                                                           conformal_score)
    labels = range(len(class_names))
    report = {
        **(context or {}), "date": time.strftime("%Y-%m-%d"), "val_images": len(val_labels),
        "test_images": len(test_labels), "tta_flip": tta_flip, "class_names": list(class_names),
        "members": [{"source": m.source, "weight": float(w), "top1": topk_accuracy(p, test_labels, 1),
                     "top3": topk_accuracy(p, test_labels, 3), **class_averaged(p, test_labels, labels),
                     "nll": nll(p, test_labels),
                     "ece": expected_calibration_error(p, test_labels), "input_size": m.data_config["input_size"]}
                    for m, w, p in zip(members, weights, test_member)],
        "ensemble": {"top1": topk_accuracy(calibrated, test_labels, 1), "top3": topk_accuracy(calibrated, test_labels, 3),
                     **class_averaged(calibrated, test_labels, labels),
                     "temperature": temperature,
                     "nll_uncalibrated": nll(raw, test_labels), "nll_calibrated": nll(calibrated, test_labels),
                     "ece_uncalibrated": expected_calibration_error(raw, test_labels),
                     "ece_calibrated": expected_calibration_error(calibrated, test_labels),
                     "equal_weight_top1": topk_accuracy(test_member.mean(axis=0), test_labels, 1)},
        "per_class": classification_report(test_labels, predicted, labels=labels, target_names=class_names,
                                           output_dict=True, zero_division=0),
        "confusion_matrix": confusion_matrix(test_labels, predicted, labels=labels).tolist(),
        "uncertainty": {
            **asdict(uncertainty), "flagged_accuracy_target": flagged_accuracy,
            "val_fire_rate": float(uncertainty.flags(val_calibrated, val_member).mean()),
            "test_fire_rate": float(flagged.mean()),
            "test_flagged_top1": _accuracy(predicted[flagged], test_labels[flagged]),
            "test_unflagged_top1": _accuracy(predicted[~flagged], test_labels[~flagged])},
    }
    if conformal is None:
        report["conformal_skipped"] = skipped
    else:
        report["conformal"] = conformal_summary(conformal, calibration_scores, calibrated, test_labels, class_names,
                                                flagged)
    return EnsembleEvaluation(report, weights, temperature, uncertainty, raw, calibrated, conformal)


def class_averaged(probs: np.ndarray, labels: np.ndarray, classes) -> dict:
    """Balanced accuracy (mean per-class recall, %) and macro-F1: every class counts alike, however rare."""
    from sklearn.metrics import balanced_accuracy_score, f1_score  # not at import: finetune.py imports this module
    predicted = probs.argmax(axis=1)
    return {"balanced_accuracy": float(balanced_accuracy_score(labels, predicted) * 100),
            "macro_f1": float(f1_score(labels, predicted, labels=list(classes), average="macro", zero_division=0))}


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float | None:
    return float(np.mean(predicted == labels) * 100) if len(labels) else None


def out_of_domain_flags(ensemble: Ensemble, photos: dict[str, np.ndarray]) -> list[dict]:
    """The ensemble's top class, its calibrated probability, the uncertainty flag and the prediction set for each
    (H, W, 3) photo, computed as the Space computes them (`Ensemble.predict` on the photo as decoded, the same
    rules)."""
    rows = []
    for name, pixels in photos.items():
        probs, member_probs = ensemble.predict(torch.from_numpy(pixels).permute(2, 0, 1)[None])
        top = int(probs[0].argmax())
        rows.append({"image": name, "top_class": ensemble.class_names[top], "probability": float(probs[0, top]),
                     "members_agreeing": int((member_probs[:, 0].argmax(axis=1) == top).sum()),
                     "flagged": bool(ensemble.uncertainty.flags(probs, member_probs)[0])})
        if ensemble.conformal is not None:
            prediction_set = ranked_set(ensemble.conformal, probs[0], ensemble.class_names)
            rows[-1].update(set_size=len(prediction_set), prediction_set=prediction_set)
    return rows


def write_outputs(evaluation: EnsembleEvaluation, members: list[MemberPredictions], test_labels: np.ndarray,
                  output_dir: Path) -> list[Path]:
    """report.json, ensemble.json (local members relative to it), confusion_matrix.png, reliability_diagram.png."""
    output_dir.mkdir(parents=True, exist_ok=True)
    report = evaluation.report
    sources = [os.path.relpath(Path(m.source).resolve(), output_dir.resolve()) if Path(m.source).is_dir() else m.source
               for m in members]  # so the manifest and its member folders can move together
    manifest = manifest_dict(report["class_names"],
                             [(s, w, m.data_config) for s, w, m in zip(sources, evaluation.weights, members)],
                             evaluation.temperature, report["tta_flip"], evaluation.uncertainty, evaluation.conformal)
    paths = [output_dir / name for name in ("report.json", "ensemble.json", "confusion_matrix.png",
                                             "reliability_diagram.png")]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(json.dumps(manifest, indent=2))
    e = report["ensemble"]
    save(confusion_matrix_figure(np.asarray(report["confusion_matrix"]), report["class_names"],
                                 f"Ensemble, test split (top-1 {e['top1']:.2f}%)"), paths[2])
    save(reliability_figure({
        f"before (ECE {e['ece_uncalibrated'] * 100:.2f}%)": calibration_bins(evaluation.test_uncalibrated, test_labels),
        f"after T={e['temperature']:.2f} (ECE {e['ece_calibrated'] * 100:.2f}%)":
            calibration_bins(evaluation.test_calibrated, test_labels)}), paths[3])
    if "conformal" in report:
        c = report["conformal"]
        paths.append(save(coverage_figure(c["curve"], c["coverage"], c["score"].upper()),
                          output_dir / "conformal_coverage.png"))
    return paths


def summary_lines(report: dict) -> list[str]:
    lines = [f"{m['source']}: top-1 {m['top1']:.2f}%  top-3 {m['top3']:.2f}%  weight {m['weight']:.3f}"
             for m in report["members"]]
    e = report["ensemble"]
    lines.append(f"ensemble: top-1 {e['top1']:.2f}%  top-3 {e['top3']:.2f}%  balanced accuracy "
                 f"{e['balanced_accuracy']:.2f}%  macro-F1 {e['macro_f1']:.3f}  "
                 f"ECE {e['ece_uncalibrated'] * 100:.2f}% -> "
                 f"{e['ece_calibrated'] * 100:.2f}% (T = {e['temperature']:.3f})")
    if "student" in report:
        s = report["student"]
        lines.append(f"student {s['source']}: top-1 {s['top1']:.2f}%  ECE {s['ece_uncalibrated'] * 100:.2f}% -> "
                     f"{s['ece_calibrated'] * 100:.2f}% (T = {s['temperature']:.3f})  agrees with the ensemble on "
                     f"{s['agreement']:.1f}%" + (f"  batch-1 {s['latency_ms']:.1f} ms (ensemble {s['ensemble_latency_ms']:.1f} ms)"
                                                 if s.get("latency_ms") is not None else ""))
    if "uncertainty" in report:
        u = report["uncertainty"]
        lines.append(f"uncertainty hint (probability < {u['min_confidence']:.3f} or members agreeing < "
                     f"{u['min_agreement']:.0%}): fires on {u['test_fire_rate'] * 100:.1f}% of test images")
    if "conformal" in report:
        c, t = report["conformal"], report["conformal"]["test"]
        lines.append(f"prediction sets ({c['score'].upper()}, {c['coverage']:.0%} asked, calibrated on "
                     f"{c['validation_size']:,} validation images): hold the true class for "
                     f"{t['coverage'] * 100:.1f}% of test images, "
                     f"{t['mean_set_size']:.2f} classes on average, {t['singletons'] * 100:.1f}% a single class")
    return lines
