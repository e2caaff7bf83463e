"""Threshold optimizer: exactness against a brute-force scikit-learn search, curves, and bad inputs."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import REPO
from vision_ensemble.evaluation.thresholds import (OBJECTIVES, ObjectiveParams, ScoredLabels, ThresholdError,
                                                   average_precision, optimize, pr_curve, read_scores_csv, roc_auc,
                                                   roc_curve, sweep)

PARAMS = ObjectiveParams(beta=2.0, cost_fp=1.0, cost_fn=7.0, min_precision=0.25, min_recall=0.7)


def datasets():
    rng = np.random.default_rng(42)
    y = rng.random(600) < 0.3
    yield "random", y, np.where(y, rng.normal(1, 1, y.size), rng.normal(0, 1, y.size))
    y = rng.random(3000) < 0.4
    yield "tie-heavy", y, np.round(np.clip(np.where(y, 0.6, 0.4) + rng.normal(0, 0.2, y.size), 0, 1), 1)
    y = np.zeros(1000, dtype=bool)
    y[rng.choice(1000, 10, replace=False)] = True  # 1% prevalence
    yield "1%-prevalence", y, np.where(y, rng.beta(8, 2, y.size), rng.beta(2, 6, y.size))


DATASETS = {name: (y, scores) for name, y, scores in datasets()}


@functools.cache
def brute_force(name: str) -> dict[str, float]:
    """Every objective's optimum over all distinct thresholds, from scikit-learn's own metric functions: the
    thresholds are the columns of one multilabel problem where a metric takes one, else one call per threshold."""
    y, scores = DATASETS[name]
    p = PARAMS
    thresholds = np.unique(scores)
    truth, pred = np.repeat(y[:, None], len(thresholds), axis=1), scores[:, None] >= thresholds
    per_threshold = {"average": None, "zero_division": 0}
    precision = skm.precision_score(truth, pred, **per_threshold)
    recall = skm.recall_score(truth, pred, **per_threshold)
    (tn, fp), (fn, tp) = skm.multilabel_confusion_matrix(truth, pred).transpose(1, 2, 0)
    values = {
        "f1": skm.f1_score(truth, pred, **per_threshold),
        "fbeta": skm.fbeta_score(truth, pred, beta=p.beta, **per_threshold),
        "youden": recall - fp / (fp + tn),
        "balanced_accuracy": [skm.balanced_accuracy_score(y, column) for column in pred.T],
        "accuracy": (tp + tn) / len(y),
        "mcc": [skm.matthews_corrcoef(y, column) for column in pred.T],
        "cost": -(p.cost_fp * fp + p.cost_fn * fn) / len(y),
        "recall_at_precision": np.where(precision >= p.min_precision, recall, -np.inf),
        "precision_at_recall": np.where(recall >= p.min_recall, precision, -np.inf),
    }
    best = {objective: float(np.max(v)) for objective, v in values.items()}
    best["cost"] = -best["cost"]
    return best


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("name", list(DATASETS))
def test_optimum_equals_brute_force_with_sklearn(objective, name):
    y, scores = DATASETS[name]
    data = ScoredLabels(y, scores, "label", "score", "1", "0")
    result = optimize(data, objective, PARAMS)
    assert result.value == pytest.approx(brute_force(name)[objective], abs=1e-12)
    # The reported threshold really achieves the reported metrics.
    pred = scores >= result.threshold
    assert result.at_optimum["confusion_matrix"]["tp"] == int(np.sum(pred & y))
    assert result.at_optimum["confusion_matrix"]["fp"] == int(np.sum(pred & ~y))
    assert result.at_half["confusion_matrix"]["tp"] == int(np.sum((scores >= 0.5) & y))


@pytest.mark.parametrize("name", list(DATASETS))
def test_curves_equal_sklearn(name):
    y, scores = DATASETS[name]
    s = sweep(y, scores)
    precision, recall, thresholds = pr_curve(s)
    sk_p, sk_r, sk_t = skm.precision_recall_curve(y, scores)
    np.testing.assert_allclose(precision, sk_p)
    np.testing.assert_allclose(recall, sk_r)
    np.testing.assert_allclose(thresholds, sk_t)
    fpr, tpr, roc_t = roc_curve(s)
    sk_fpr, sk_tpr, sk_roc_t = skm.roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(roc_t[1:], sk_roc_t[1:])
    assert roc_auc(s) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    assert average_precision(s) == pytest.approx(skm.average_precision_score(y, scores), abs=1e-12)
    # scikit-learn's own exact sweep gives the same counts.
    tns, fps, fns, tps, sk_thresholds = skm.confusion_matrix_at_thresholds(y, scores)
    np.testing.assert_array_equal(s.tp[::-1] if sk_thresholds[0] < sk_thresholds[-1] else s.tp, tps)


def write(tmp_path, text: str | bytes, name="scores.csv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("content,positive,expected_positive", [
    ("label,score\n1,0.9\n0,0.1\n1,0.6\n0,0.4\n", None, "1"),
    ("Y_TRUE;Y_PROB\ntrue;0.9\nfalse;0.1\ntrue;0.6\nfalse;0.4\n", None, "true"),
    ("actual\tconfidence\nyes\t3.2\nno\t-1.5\nyes\t0.1\nno\t0.0\n", None, "yes"),
    ("target,probability\ncat,0.9\ndog,0.1\ncat,0.6\ndog,0.4\n", "cat", "cat"),
])
def test_reads_common_formats(tmp_path, content, positive, expected_positive):
    data = read_scores_csv(write(tmp_path, content), positive=positive)
    assert data.positive_label == expected_positive
    np.testing.assert_array_equal(data.y, [True, False, True, False])
    assert optimize(data, "f1").value == 1.0


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    ("label,score\n", "no data rows"),
    ("name,value\na,1\nb,2\n", "no recognisable label column"),
    ("label,score\n1,0.2\n1,0.3\n", "one class only"),
    ("label,score\n1,abc\n0,0.3\n", "not numeric"),
    ("label,score\n1,nan\n0,0.3\n", "NaN or infinite"),
    ("label,score\n1,inf\n0,0.3\n", "NaN or infinite"),
    ("label,score\n1,0.1\n0,0.3\n2,0.5\n", "3 values"),
    ("label,score\ncat,0.1\ndog,0.3\n", "say which is positive"),
    (bytes(range(256)) * 10, "binary"),
    ("label,score\n1,0.5\n,0.3\n", "no label"),
])
def test_bad_inputs_give_clear_messages(tmp_path, content, message):
    with pytest.raises(ThresholdError, match=message):
        read_scores_csv(write(tmp_path, content))


def test_row_limit_and_unreachable_constraint(tmp_path):
    path = write(tmp_path, "label,score\n" + "1,0.9\n0,0.1\n" * 50)
    with pytest.raises(ThresholdError, match="limit is 10"):
        read_scores_csv(path, max_rows=10)
    data = read_scores_csv(write(tmp_path, "label,score\n1,0.1\n0,0.9\n"))
    with pytest.raises(ThresholdError, match="no threshold reaches precision >= 0.99"):
        optimize(data, "recall_at_precision", ObjectiveParams(min_precision=0.99))


@pytest.mark.slow
def test_cli_json_matches_the_library(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.3
    scores = np.clip(np.where(y, 0.65, 0.35) + rng.normal(0, 0.2, 500), 0, 1)
    path = write(tmp_path, "y_true,y_score\n" + "".join(f"{int(a)},{b:.6f}\n" for a, b in zip(y, scores)))
    out = subprocess.run([sys.executable, str(REPO / "evaluation" / "thresholds.py"), str(path), "--objective", "mcc",
                          "--json", "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    expected = optimize(read_scores_csv(path), "mcc")
    assert summary["objective"] == "mcc"
    assert summary["threshold"] == expected.threshold and summary["value"] == expected.value
    assert set(summary["at_optimum"]) >= {"precision", "recall", "f1", "confusion_matrix"} and "at_0.5" in summary
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.csv", "summary.json", "pr.png", "roc.png",
                                                               "metrics.png"}
    bad = subprocess.run([sys.executable, str(REPO / "evaluation" / "thresholds.py"), str(write(tmp_path, b"", "e.csv"))],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "error: the file is empty" in bad.stderr and "Traceback" not in bad.stderr
