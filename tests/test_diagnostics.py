"""The uncertainty rule chosen on validation, and `evaluate.py --diagnose`: error gallery, top confusions,
accuracy under Captum's FGSM and PGD, all in report.json and the model card's results section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO, make_member, make_vit_member, run_in_process
from vision_ensemble.evaluation.diagnostics import top_confusions
from vision_ensemble.evaluation.ensemble import UncertaintyRule
from vision_ensemble.hub import results_markdown


def calibrated_predictions(n: int, seed: int, classes: int = 10):
    """Probabilities whose top probability is the chance of being right, and labels drawn that way."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.15, 1.0, n)
    predicted = rng.integers(0, classes, n)
    probs = np.tile(((1 - confidence) / (classes - 1))[:, None], (1, classes))
    probs[np.arange(n), predicted] = confidence
    wrong = rng.uniform(size=n) > confidence
    labels = np.where(wrong, (predicted + rng.integers(1, classes, n)) % classes, predicted)
    return probs, labels


def test_uncertainty_rule_chosen_on_val_flags_the_less_accurate_predictions():
    val_probs, val_labels = calibrated_predictions(4000, seed=0)
    rule = UncertaintyRule.choose(val_probs, val_labels, max_flagged_accuracy=0.5)
    # Predictions under t are right (0.15 + t) / 2 of the time on average: at most half for t <= 0.85.
    assert rule.min_confidence == pytest.approx(0.85, abs=0.05) and rule.min_agreement == 0.5
    test_probs, test_labels = calibrated_predictions(4000, seed=1)
    members = np.stack([test_probs] * 3)  # members that all agree: only the confidence cut-off fires
    flagged = rule.flags(test_probs, members)
    correct = test_probs.argmax(axis=1) == test_labels
    assert 0.6 < flagged.mean() < 0.95
    assert correct[flagged].mean() < 0.55 < correct[~flagged].mean()
    # A confident prediction that two of three members do not share is flagged too.
    disagreeing = members.copy()
    disagreeing[1:, :, :] = np.roll(test_probs, 1, axis=1)
    confident = test_probs.max(axis=1) > rule.min_confidence
    assert rule.flags(test_probs, disagreeing)[confident].all()
    # A perfect validation split never fires on confidence.
    assert UncertaintyRule.choose(val_probs, val_probs.argmax(axis=1)).min_confidence == 0


def test_top_confusions_are_the_largest_off_diagonal_cells():
    matrix = np.array([[50, 3, 9], [1, 40, 0], [7, 2, 30]])
    assert top_confusions(matrix, ["a", "b", "c"], count=3) == [
        {"true": "a", "predicted": "c", "count": 9}, {"true": "c", "predicted": "a", "count": 7},
        {"true": "a", "predicted": "b", "count": 3}]


@pytest.mark.slow
def test_evaluate_diagnose_writes_gallery_robustness_and_card(cifar10_archive, cache_root, tmp_path):
    # A CNN at 48 px and a ViT at 32 px: the 32 px test images are resized inside the attacked wrapper.
    members = [make_member(tmp_path / "cnn", 0, 48, sharpen=5.0), make_vit_member(tmp_path / "vit", 1)]
    out_dir = tmp_path / "results"
    samples = 32  # the whole (sub-sampled) test split is attacked, so epsilon 0 must equal the clean top-1
    result = run_in_process(
        REPO / "evaluation" / "evaluate.py", "--models", *members, "--data-dir", cifar10_archive, "--cache-dir",
        cache_root, "--output-dir", out_dir, "--tta", "--max-eval-samples", samples, "--diagnose", "--attack-samples",
        samples, "--pgd-steps", "3", "--ood-images", REPO / "examples" / "china.jpg", REPO / "examples" / "flower.jpg")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out_dir / "report.json").read_text())
    diagnostics = report["diagnostics"]
    for name in ("error_gallery.png", "robustness.png"):
        assert (out_dir / name).stat().st_size > 20_000
    errors = diagnostics["confident_errors"]
    assert errors and all(e["true"] != e["predicted"] for e in errors)
    assert [e["probability"] for e in errors] == sorted((e["probability"] for e in errors), reverse=True)
    matrix = np.asarray(report["confusion_matrix"])
    assert diagnostics["top_confusions"][0]["count"] == (matrix - np.diag(np.diag(matrix))).max()

    robustness = diagnostics["robustness"]
    assert robustness["epsilons_255"] == [0, 1, 2, 4, 8] and robustness["samples"] == samples
    clean = {m["source"]: m["top1"] for m in report["members"]} | {"ensemble": report["ensemble"]["top1"]}
    assert set(robustness["pgd"]) == set(clean)
    for name, top1 in clean.items():
        for attack in ("fgsm", "pgd"):
            assert robustness[attack][name][0] == pytest.approx(top1)
        assert robustness["pgd"][name][-1] <= robustness["pgd"][name][0]
        assert robustness["pgd"][name][-1] <= robustness["fgsm"][name][-1] + 100 / samples  # PGD is the stronger

    uncertainty = report["uncertainty"]
    assert json.loads((out_dir / "ensemble.json").read_text())["uncertainty"] == {
        "min_confidence": uncertainty["min_confidence"], "min_agreement": 0.5}
    assert 0 <= uncertainty["test_fire_rate"] <= 1
    assert [row["image"] for row in uncertainty["out_of_domain"]] == ["china.jpg", "flower.jpg"]

    card = results_markdown(report)
    assert "fires on" in card and "out-of-domain" in card and "| PGD | **ensemble** |" in card
    assert f"| {diagnostics['top_confusions'][0]['true']} | {diagnostics['top_confusions'][0]['predicted']} |" in card
    older = {k: v for k, v in report.items() if k not in ("uncertainty", "diagnostics")}
    assert "fires on" not in results_markdown(older) and "| **ensemble**" in results_markdown(older)
