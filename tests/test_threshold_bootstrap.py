"""Bootstrap intervals for the threshold optimizer: each replicate equals the slow, obvious reference (repeat every
row as often as the replicate draws it, run the existing `optimize`), the intervals are seeded and reproducible,
cover the population's answer about as often as they say, and reach the CLI, its JSON and the plot."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import EXAMPLES, REPO
from vision_ensemble.evaluation.threshold_bootstrap import bootstrap, replicate_row_weights
from vision_ensemble.evaluation.thresholds import (OBJECTIVES, TABLE_METRICS, ObjectiveParams, ScoredLabels,
                                                   ThresholdError, optimize)


def scored(y, scores) -> ScoredLabels:
    return ScoredLabels(np.asarray(y, bool), np.asarray(scores, float), "label", "score", "1", "0")


def sample(rng, n, prevalence=0.3, decimals=None):
    y = rng.random(n) < prevalence
    scores = np.where(y, rng.beta(5, 2, n), rng.beta(2, 5, n))
    return scored(y, scores if decimals is None else np.round(scores, decimals))


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_replicate_equals_the_slow_reference(objective):
    data = sample(np.random.default_rng(3), 400, decimals=2)  # rounded: many rows share a score
    params = ObjectiveParams(beta=2.0, cost_fp=1.0, cost_fn=4.0, min_precision=0.85, min_recall=0.8)
    result = optimize(data, objective, params)
    intervals = bootstrap(result, 40, seed=7, params=params)
    assert intervals.replicates == 40 and len(intervals.thresholds) == 40
    for replicate in range(40):
        weights = replicate_row_weights(data, replicate, seed=7)
        resampled = scored(np.repeat(data.y, weights), np.repeat(data.scores, weights))
        try:
            reference = optimize(resampled, objective, params)
        except ThresholdError:  # no feasible threshold in this resample
            assert np.isnan(intervals.thresholds[replicate])
            continue
        assert intervals.thresholds[replicate] == reference.threshold
        for name in TABLE_METRICS:
            assert intervals.metrics[name][replicate] == reference.at_optimum[name], (replicate, name)


def test_weights_are_poisson_and_intervals_reproducible():
    data = sample(np.random.default_rng(0), 20_000)
    weights = np.concatenate([replicate_row_weights(data, r) for r in range(5)])
    counts = np.bincount(weights, minlength=6)[:6] / len(weights)
    np.testing.assert_allclose(counts, stats.poisson(1).pmf(np.arange(6)), atol=0.005)
    result = optimize(data, "f1")
    first, again = bootstrap(result, 120, seed=1), bootstrap(result, 120, seed=1)
    assert first.intervals == again.intervals
    assert np.array_equal(bootstrap(result, 60, seed=1).thresholds, first.thresholds[:60])  # chunk-independent
    assert bootstrap(result, 120, seed=2).intervals != first.intervals
    low, high = first.intervals["threshold"]
    assert low <= result.threshold <= high
    assert first.intervals["f1"][0] <= result.value <= first.intervals["f1"][1]


def population_best_f1(prevalence=0.3) -> float:
    t = np.linspace(0, 1, 100_001)
    tpr, fpr = stats.beta(5, 2).sf(t), stats.beta(2, 5).sf(t)
    return float(np.max(2 * prevalence * tpr / (prevalence * tpr + prevalence + (1 - prevalence) * fpr)))


def test_intervals_cover_the_population_answer_and_shrink_with_more_rows():
    """On 100 samples of 2,000 rows from a known population, the 90% interval for F1 at the optimum holds the
    population's best F1 in about 90% of them (at least 80%: the optimum is re-chosen on each sample, a small
    upward bias), and a sample 4x larger gives an interval about half as wide."""
    truth, rng = population_best_f1(), np.random.default_rng(11)
    widths, hits = [], 0
    for _ in range(100):
        intervals = bootstrap(optimize(sample(rng, 2000), "f1"), 200, confidence=0.9)
        low, high = intervals.intervals["f1"]
        hits += low <= truth <= high
        widths.append(high - low)
    assert 80 <= hits <= 99, hits
    large = [np.diff(bootstrap(optimize(sample(rng, 8000), "f1"), 200, confidence=0.9).intervals["f1"])[0]
             for _ in range(10)]
    assert 0.35 < np.median(large) / np.median(widths) < 0.7


def test_cli_prints_the_interval_in_words_and_writes_it_to_json_and_the_plot(tmp_path):
    command = [sys.executable, str(REPO / "evaluation" / "thresholds.py"), str(EXAMPLES / "classifier_scores.csv"),
               "--bootstrap", "300"]
    table = subprocess.run(command + ["--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "95% interval" in table.stdout and "of the best thresholds fell between" in table.stdout
    as_json = subprocess.run(command + ["--json", "--seed", "3"], capture_output=True, text=True, cwd=REPO)
    summary = json.loads(as_json.stdout)
    low, high = summary["bootstrap"]["intervals"]["threshold"]
    assert summary["bootstrap"]["replicates"] == 300 and low <= summary["threshold"] <= high
    assert json.loads((tmp_path / "summary.json").read_text())["bootstrap"]["seed"] == 0
    assert (tmp_path / "metrics.png").stat().st_size > 20_000
    bad = subprocess.run(command[:-1] + ["0.5"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "invalid int value" in bad.stderr


@pytest.mark.slow
def test_space_checkbox_adds_the_interval_and_the_old_call_still_works(tmp_path):
    from gradio_client import handle_file

    from conftest import running_app

    csv = handle_file(str(EXAMPLES / "classifier_scores.csv"))
    with running_app(tmp_path / "missing.json", tmp_path / "app.log") as (client, _):
        args = [csv, "label", "score", "(auto)", "f1", 1, 1, 1, 0.9, 0.9]
        plain = client.predict(*args, api_name="/optimize_threshold")
        with_intervals = client.predict(*args, True, api_name="/optimize_threshold")
    assert "How sure is it?" not in plain[0]
    assert "How sure is it? Redoing the search on 1,000 resamples" in with_intervals[0]
    assert "| 95% interval | from | to |" in with_intervals[0] and "| threshold |" in with_intervals[0]
