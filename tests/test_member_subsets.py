"""benchmarks/member_subsets.py: the subset scores and the sign test that decide which members ship."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import REPO, make_member
from vision_ensemble.config import recipe_config
from vision_ensemble.evaluation.predictions import save_predictions

sys.path.insert(0, str(REPO / "benchmarks"))
from member_subsets import agreement, growth, main, subset_table  # noqa: E402


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


def test_growth_adds_the_best_member_first_and_every_order_ends_at_the_whole_ensemble():
    labels = np.array([0, 1] * 10)
    index = np.arange(20)
    probs = {"weak": one_hot(index < 10, labels, 0.7), "strong": one_hot(index >= 4, labels, 0.8),
             "other": one_hot(index % 4 != 0, labels, 0.65)}  # no two sums tie
    rows = growth(probs, labels, orders=50)
    assert [row["k"] for row in rows] == [1, 2, 3]
    assert rows[0]["greedy_added"] == "strong" and rows[0]["greedy"] == 80.0
    assert rows[0]["random_min"] == 50.0 and rows[0]["random_max"] == 80.0  # each member leads some order
    whole = subset_table(probs, labels, baseline=["weak"], min_size=3)[0]["top1"]
    assert rows[-1]["random_min"] == rows[-1]["random_mean"] == rows[-1]["random_max"] == rows[-1]["greedy"] == whole
    assert all(row["random_min"] <= row["random_mean"] <= row["random_max"] for row in rows)


def test_agreement_counts_images_by_members_right_and_the_errors_each_pair_shares():
    labels = np.array([0, 1] * 5)
    index = np.arange(10)
    probs = {"a": one_hot(index >= 2, labels, 0.9),   # wrong on 0, 1
             "b": one_hot(index >= 4, labels, 0.6),   # wrong on 0-3
             "c": one_hot(index != 1, labels, 0.7)}   # wrong on 1
    result = agreement(probs, labels)
    # right for 0 members: image 1; for 1: image 0 (c); for 2: 2, 3 (a, c); for 3: 4-9
    assert result["right_by_count"] == [1, 1, 2, 6]
    # image 0: a and b (0.9 + 0.6 wrong) outvote c's 0.7; images 2, 3: a and c outvote b
    assert result["ensemble_right_by_count"] == [0, 0, 2, 6]
    assert result["shared_errors"]["a"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert result["shared_errors"]["b"]["a"] == 0.5 and result["shared_errors"]["c"]["b"] == 1.0


def test_the_command_line_plots_the_growth_of_members_from_their_prediction_files(cifar10, cifar10_archive, tmp_path):
    paths, cfg = [], recipe_config({"model": "test_resnet", "data_dir": str(cifar10_archive), "max_eval_samples": 64,
                                    "max_train_samples": 64})
    for seed in range(3):  # predictions.npz as a training run writes them, of untrained members
        folder = make_member(tmp_path / f"m{seed}" / "best", seed=seed, img_size=32)
        (folder / "metrics.json").write_text(json.dumps({"epoch": 1, "val_top1": 0.0}))
        paths.append(str(save_predictions(folder.parent / "predictions.npz", folder, cifar10, cfg, f"someone/m{seed}")))
    plot, table = tmp_path / "growth.png", tmp_path / "rows.json"
    assert main([*paths, "--min-size", "4", "--growth", str(plot), "--target", "92.5",
                 "--agreement", "--json", str(table)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(table.read_text())
    assert saved["rows"] == [] and [row["k"] for row in saved["growth"]] == [1, 2, 3]
    assert sorted(row["greedy_added"] for row in saved["growth"]) == ["m0", "m1", "m2"]
    assert sum(saved["agreement"]["right_by_count"]) == saved["test_images"]
    assert sorted(saved["agreement"]["shared_errors"]) == ["m0", "m1", "m2"]
