"""benchmarks/member_subsets.py: the subset scores and the sign test that decide which members ship."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from member_subsets import main, subset_table  # noqa: E402


def one_hot(right: np.ndarray, labels: np.ndarray, confidence: float) -> np.ndarray:
    """Probabilities over 2 classes: `confidence` on the true class where `right`, on the other one elsewhere."""
    top = np.where(right, labels, 1 - labels)
    probs = np.full((len(labels), 2), 1 - confidence)
    probs[np.arange(len(labels)), top] = confidence
    return probs


def test_subsets_count_the_answers_they_fix_and_break_against_the_baseline():
    labels = np.array([0, 1] * 10)
    a = np.arange(20) < 12               # right on images 0-11
    b = (np.arange(20) >= 4)             # right on images 4-19
    probs = {"a": one_hot(a, labels, 0.9), "b": one_hot(b, labels, 0.6)}
    rows = {tuple(r["members"]): r for r in subset_table(probs, labels, baseline=["a"], min_size=1)}
    assert rows[("a",)] == {"members": ["a"], "top1": 60.0, "fixed": 0, "broken": 0, "z": 0.0, "p": 1.0}
    # b alone: fixes 12-19 (8), breaks 0-3 (4)
    assert rows[("b",)]["top1"] == 80.0 and (rows[("b",)]["fixed"], rows[("b",)]["broken"]) == (8, 4)
    assert rows[("b",)]["z"] == pytest.approx(4 / 12 ** 0.5)
    assert rows[("b",)]["p"] == pytest.approx(0.388, abs=1e-3)  # two-sided exact binomial, 8 of 12
    # a + b, equal weights: a's 0.9 outvotes b's 0.6 where they disagree, so a's answers
    assert rows[("a", "b")]["top1"] == 60.0 and rows[("a", "b")]["fixed"] == 0


def test_the_command_line_names_a_missing_file_and_refuses_an_unknown_baseline(tmp_path):
    from vision_ensemble.evaluation.predictions import PredictionsError

    with pytest.raises(PredictionsError, match="no such file"):
        main([str(tmp_path / "missing" / "predictions.npz")])
    member = REPO / "models" / "cifar10" / "airbench_s-seed0"  # refused before any member is run
    with pytest.raises(SystemExit, match="--baseline names no member: nobody"):
        main([str(member), "--baseline", "nobody", "--data-dir", str(tmp_path / "never-read.tar.gz")])
