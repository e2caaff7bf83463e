"""A distilled student beside the ensemble it learnt from: the student evaluated as a one-member ensemble (its
own temperature and uncertainty rule fitted on the validation split), how often it agrees with the ensemble,
and both models' batch-1 latency as the app serves them; then the student's folder for the Space
(`evaluation/evaluate.py --student`): its one-member `ensemble.json`, the report, and its weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import LATENCY_THREADS, UNCERTAINTY_FLAGGED_ACCURACY
from .ensemble import Ensemble
from .report import EnsembleEvaluation, MemberPredictions, evaluate_ensemble, write_outputs

LATENCY_IMAGES = 50  # single test images timed per model (after 5 warm-up predictions)
STUDENT_MODEL_FOLDER = "model"  # the student's weights inside the folder the Space serves


def batch1_latency_ms(ensemble: Ensemble, images: torch.Tensor, count: int = LATENCY_IMAGES) -> float:
    """Median milliseconds of `Ensemble.predict` on one uint8 image at a time on LATENCY_THREADS CPU threads,
    through ONNX Runtime as the app runs it (preprocessing, networks, soft vote, temperature)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)  # the ONNX Runtime sessions take their thread count from torch's
    with tempfile.TemporaryDirectory(prefix="latency-onnx-") as folder:
        ensemble.use_onnxruntime(folder)
        try:
            times = []
            for i in range(count + 5):
                start = time.perf_counter()
                ensemble.predict(images[i % len(images)][None])
                times.append((time.perf_counter() - start) * 1000)
        finally:
            for member in ensemble.members:
                member.session = None
            torch.set_num_threads(threads)
    return float(np.median(times[5:]))


def compare_student(evaluation: EnsembleEvaluation, student: MemberPredictions, val_labels: np.ndarray,
                    test_labels: np.ndarray, latency_ms: dict[str, float | None] | None = None,
                    flagged_accuracy: float = UNCERTAINTY_FLAGGED_ACCURACY) -> EnsembleEvaluation:
    """The student's own evaluation (a one-member ensemble); adds the comparison to `evaluation.report`
    as "student" (top-1, ECE before and after its temperature, agreement with the ensemble, latencies)."""
    report = evaluation.report
    own = evaluate_ensemble([student], val_labels, test_labels, report["class_names"], report["tta_flip"],
                            context={k: report[k] for k in ("command", "device", "data_dir") if k in report},
                            flagged_accuracy=flagged_accuracy)
    s, e = own.report["ensemble"], report["ensemble"]
    latency_ms = latency_ms or {}
    report["student"] = {
        "source": student.source, "input_size": student.data_config["input_size"],
        "top1": s["top1"], "top3": s["top3"], "temperature": s["temperature"],
        "ece_uncalibrated": s["ece_uncalibrated"], "ece_calibrated": s["ece_calibrated"],
        "nll_calibrated": s["nll_calibrated"],
        "agreement": float(np.mean(own.test_calibrated.argmax(axis=1) == evaluation.test_calibrated.argmax(axis=1)) * 100),
        "top1_gap_to_ensemble": e["top1"] - s["top1"],
        "best_member_top1": max(m["top1"] for m in report["members"]),
        "latency_ms": latency_ms.get("student"), "ensemble_latency_ms": latency_ms.get("ensemble"),
        "uncertainty": own.report["uncertainty"]}
    return own


def write_student_folder(evaluation: EnsembleEvaluation, own: EnsembleEvaluation, student: MemberPredictions,
                         test_labels: np.ndarray, folder: Path) -> list[Path]:
    """`folder`: ensemble.json naming the student alone (with its temperature and uncertainty rule), report.json
    (the ensemble's report, the student's numbers in it, `"served": "student"`), the student's confusion matrix
    and reliability diagram, and a copy of its weights when it is a local folder, so the whole folder moves
    (into the repository as `student/`, served by `python app.py` by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    if Path(student.source).is_dir():  # its weights travel with the manifest
        copy = folder / STUDENT_MODEL_FOLDER
        if copy.resolve() != Path(student.source).resolve():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(student.source, copy, ignore=shutil.ignore_patterns("*.partial*"))
        student = MemberPredictions(str(copy), student.data_config, student.val_probs, student.test_probs)
    written = write_outputs(own, [student], test_labels, folder)
    report = {**evaluation.report, "uncertainty": own.report["uncertainty"], "served": "student"}
    written[0].write_text(json.dumps(report, indent=2))
    return written
