"""Conformal prediction sets: scores, cut-offs and sets against MAPIE's on the same numbers; the coverage guarantee
on synthetic probabilities whose true coverage is known; end to end on a tiny ensemble (evaluate.py, ensemble.json,
the one prediction path, the live API)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from conftest import EXAMPLES, REPO, running_app
from vision_ensemble.evaluation.conformal import (ConformalError, calibrate, conformal_rank, coverage_curve,
                                                  label_scores, set_report, set_words)


def synthetic(rng, n, classes=10, concentration=0.5):
    """Probabilities and labels drawn from them: perfectly calibrated, so a set's true coverage is its probability."""
    probs = rng.dirichlet(np.full(classes, concentration), n)
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return probs, labels


class GivenProbabilities(ClassifierMixin, BaseEstimator):
    """A prefit 'classifier' whose features are already its probabilities: MAPIE conformalizes them as they are."""

    def fit(self, X, y=None):
        self.classes_ = np.arange(np.asarray(X).shape[1])
        return self

    def predict_proba(self, X):
        return np.asarray(X)

    def predict(self, X):
        return np.asarray(X).argmax(axis=1)


@pytest.fixture(scope="module")
def split():
    probs, labels = synthetic(np.random.default_rng(0), 2000)
    return probs[:1000], labels[:1000], probs[1000:], labels[1000:]


def mapie(score, val_probs, val_labels, coverage=0.9):
    from mapie.classification import SplitConformalClassifier

    model = SplitConformalClassifier(GivenProbabilities().fit(val_probs), confidence_level=coverage,
                                     conformity_score=score, prefit=True, random_state=0)
    return model.conformalize(val_probs, val_labels)


@pytest.mark.filterwarnings("ignore")
def test_lac_cutoff_and_sets_equal_mapies(split):
    val_probs, val_labels, test_probs, _ = split
    for coverage in (0.8, 0.9, 0.95):
        rule, _ = calibrate(val_probs, val_labels, coverage, "lac")
        theirs = mapie("lac", val_probs, val_labels, coverage)
        _, sets = theirs.predict_set(test_probs)
        assert rule.cutoff == pytest.approx(float(theirs._mapie_classifier.quantiles_[0]), abs=1e-12)
        assert np.array_equal(rule.sets(test_probs), sets[:, :, 0])


@pytest.mark.filterwarnings("ignore")
def test_aps_scores_and_sets_equal_mapies_without_randomisation(split):
    from mapie.conformity_scores import APSConformityScore

    val_probs, val_labels, test_probs, _ = split
    rule, true_scores = calibrate(val_probs, val_labels, 0.9, "aps")
    # MAPIE's APS score is the cumulated probability down to the true label minus U * its probability; ours is U = 1
    cumulated, _ = APSConformityScore.get_true_label_cumsum_proba(val_labels, val_probs, np.arange(10))
    np.testing.assert_allclose(cumulated[:, 0] - val_probs[np.arange(1000), val_labels], true_scores, atol=1e-12)
    # Given our (non-randomised) scores, MAPIE computes the same cut-off and, including the last label, the same sets
    theirs = mapie("aps", val_probs, val_labels)
    theirs._mapie_classifier.conformity_scores_ = true_scores.reshape(-1, 1)
    _, sets = theirs.predict_set(test_probs, conformity_score_params={"include_last_label": True})
    assert rule.cutoff == pytest.approx(float(theirs._mapie_classifier.quantiles_[0]), abs=1e-12)
    assert np.array_equal(rule.sets(test_probs), sets[:, :, 0])
    assert rule.sets(test_probs).sum(axis=1).min() >= 1  # APS sets always hold the top class


def test_raps_is_aps_plus_a_rank_penalty_and_keeps_sets_prefixes(split):
    val_probs, val_labels, test_probs, _ = split
    np.testing.assert_array_equal(label_scores(test_probs, "raps", 2, 0.0), label_scores(test_probs, "aps"))
    rule, _ = calibrate(val_probs, val_labels, 0.9, "raps")
    assert rule.validation_size == 800 and 1 <= rule.k_reg <= 10 and rule.penalty > 0
    ranked = np.take_along_axis(rule.sets(test_probs), np.argsort(-test_probs, axis=1), axis=1)
    assert (np.diff(ranked.astype(int), axis=1) <= 0).all()  # a set is always the k most probable classes


@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_coverage_guarantee_holds_within_its_finite_sample_bounds(score):
    """Over 1,000 seeded calibration sets of n = 100 images, the true coverage (known: the probabilities are
    calibrated, so it is the probability mass inside the sets) is at least the level on average and at most 1/(n + 1)
    above it, and spreads as Beta(k, n + 1 - k).  The bounds are tighter than 1/(n + 1): an off-by-one order
    statistic fails them."""
    rng = np.random.default_rng(1)
    pool, _ = synthetic(rng, 40_000 if score == "raps" else 200_000)  # RAPS rescores it for each (k_reg, penalty)
    n, level, splits = 100, 0.9, 1000
    curves = {}  # per (k_reg, penalty): the pool's label scores sorted, and the probability mass up to each

    def true_coverage(rule):
        key = (rule.k_reg, rule.penalty)
        if key not in curves:
            scores = rule.label_scores(pool).ravel()
            order = np.argsort(scores)
            curves[key] = scores[order], np.r_[0.0, np.cumsum(pool.ravel()[order])] / len(pool)
        scores, mass = curves[key]
        return mass[np.searchsorted(scores, rule.cutoff, side="right")]

    rules = [calibrate(*synthetic(rng, n), level, score, seed=seed)[0] for seed in range(splits)]
    coverages = np.array([true_coverage(rule) for rule in rules])
    m = rules[0].validation_size
    k = conformal_rank(m, level)
    beta_sd = np.sqrt(k * (m + 1 - k) / ((m + 1) ** 2 * (m + 2)))
    pool_sd = (pool * rules[0].sets(pool)).sum(axis=1).std()  # how much one image's chance to be covered varies
    tolerance = 3 * beta_sd / np.sqrt(splits) + 3 * pool_sd / np.sqrt(len(pool))  # the splits', the pool's error
    assert level - tolerance <= coverages.mean() <= level + 1 / (m + 1) + tolerance, (coverages.mean(), tolerance)
    assert 0.85 * beta_sd <= coverages.std() <= 1.15 * beta_sd, (coverages.std(), beta_sd)


def test_report_and_curve_agree_at_the_chosen_level(split):
    val_probs, val_labels, test_probs, test_labels = split
    rule, calibration_scores = calibrate(val_probs, val_labels, 0.9, "aps")
    report = set_report(rule, test_probs, test_labels, [f"c{i}" for i in range(10)])
    curve = coverage_curve(rule, calibration_scores, test_probs, test_labels, np.array([0.5, 0.9, 0.99]))
    assert curve["levels"] == [0.5, 0.9, 0.99]
    assert curve["coverage"][1] == pytest.approx(report["coverage"])
    assert curve["mean_set_size"][1] == pytest.approx(report["mean_set_size"])
    assert curve["coverage"][0] < curve["coverage"][1] < curve["coverage"][2]
    assert curve["mean_set_size"][0] < curve["mean_set_size"][2]
    by_size = report["by_set_size"]
    assert sum(row["images"] for row in by_size.values()) == 1000
    assert sum(row["images"] * row["coverage"] for row in by_size.values()) / 1000 == pytest.approx(report["coverage"])
    assert report["singletons"] == pytest.approx(by_size.get(1, {"images": 0})["images"] / 1000)


def test_too_few_validation_images_and_unknown_scores_are_plain_errors(split):
    val_probs, val_labels, *_ = split
    with pytest.raises(ConformalError, match="8 validation images cannot calibrate 90% coverage: it needs at least 9"):
        calibrate(val_probs[:8], val_labels[:8], 0.9)
    with pytest.raises(ConformalError, match="unknown conformal score 'naive'"):
        calibrate(val_probs, val_labels, 0.9, "naive")
    assert set_words([]) == "no class" and set_words(["cat"]) == "cat"
    assert set_words(["cat", "dog"]) == "cat or dog" and set_words(["cat", "dog", "frog"]) == "cat, dog or frog"


# --- end to end on a tiny ensemble ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluated(ensemble_dir, cifar10, cifar10_archive, cache_root):
    """evaluate.py on conftest's two tiny members: report.json and an ensemble.json with the set rule."""
    out = ensemble_dir / "evaluated"
    result = subprocess.run([sys.executable, str(REPO / "evaluation" / "evaluate.py"), "--models",
                             str(ensemble_dir / "member_a"), str(ensemble_dir / "member_b"), "--data-dir",
                             str(cifar10_archive), "--cache-dir", str(cache_root), "--output-dir", str(out),
                             "--max-eval-samples", "200", "--coverage", "0.8", "--ood-images",
                             str(EXAMPLES / "china.jpg"), str(EXAMPLES / "flower.jpg")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prediction sets (APS, 80% asked, calibrated on 200 validation images)" in result.stdout
    return out


@pytest.mark.slow
def test_evaluate_reports_everything_but_the_sets_a_small_validation_split_cannot_calibrate(
        ensemble_dir, cifar10, cifar10_archive, cache_root, tmp_path):
    """20 validation images cannot calibrate 99% coverage: the report has everything else, says why the sets are
    left out, and the manifest holds no rule (the app then shows no set); a level outside (0, 1) is refused."""
    from vision_ensemble.hub import results_markdown

    command = [sys.executable, str(REPO / "evaluation" / "evaluate.py"), "--models", str(ensemble_dir / "member_a"),
               "--data-dir", str(cifar10_archive), "--cache-dir", str(cache_root), "--max-eval-samples", "20",
               "--output-dir", str(tmp_path)]
    result = subprocess.run([*command, "--coverage", "0.99"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    why = "20 validation images cannot calibrate 99% coverage: it needs at least 99"
    assert f"note: no conformal prediction sets: {why}" in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["conformal_skipped"].startswith(why) and "conformal" not in report
    assert report["test_images"] == 20 and 0 <= report["ensemble"]["top1"] <= 100
    assert "conformal" not in json.loads((tmp_path / "ensemble.json").read_text())
    assert f"No conformal prediction sets: {why}" in results_markdown(report)
    refused = subprocess.run([*command, "--coverage", "1.5"], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "--coverage 1.5: give a share between 0 and 1" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_evaluate_stores_the_rule_and_reports_the_sets(evaluated, ensemble_dir):
    from vision_ensemble.evaluation.ensemble import Ensemble
    from vision_ensemble.hub import results_markdown

    report = json.loads((evaluated / "report.json").read_text())
    manifest = json.loads((evaluated / "ensemble.json").read_text())
    c = report["conformal"]
    assert manifest["conformal"] == {k: c[k] for k in ("score", "cutoff", "coverage", "validation_size", "k_reg",
                                                      "penalty")}
    assert c["score"] == "aps" and c["coverage"] == 0.8 and c["validation_size"] == 200
    t = c["test"]
    assert 0 < t["coverage"] <= 1 and 1 <= t["mean_set_size"] <= 10 and t["empty"] == 0
    assert set(t["per_class_coverage"]) == set(report["class_names"])
    assert (evaluated / "conformal_coverage.png").stat().st_size > 10_000
    assert all(1 <= row["set_size"] == len(row["prediction_set"]) for row in report["uncertainty"]["out_of_domain"])
    card = results_markdown(report)
    assert "Prediction sets with a coverage guarantee" in card and "| set size | test images | coverage |" in card
    assert Ensemble.from_manifest(evaluated / "ensemble.json").conformal.cutoff == c["cutoff"]
    assert Ensemble.from_manifest(ensemble_dir / "ensemble.json").conformal is None  # an older manifest still loads


@pytest.mark.slow
def test_the_prediction_path_gives_the_calibrated_set(evaluated, ensemble_dir):
    from vision_ensemble.evaluation.ensemble import Ensemble
    from vision_ensemble.images import load_rgb
    from vision_ensemble.serving.predict import predict_image

    ensemble = Ensemble.from_manifest(evaluated / "ensemble.json")
    pixels = load_rgb(EXAMPLES / "cifar10_cat.png")
    prediction = predict_image(ensemble, pixels)
    probs, _ = ensemble.predict(__import__("torch").from_numpy(pixels).permute(2, 0, 1)[None])
    expected = [ensemble.class_names[i] for i in np.argsort(-probs[0]) if ensemble.conformal.sets(probs)[0, i]]
    assert prediction.prediction_set == expected and prediction.prediction_set[0] == prediction.top_k[0].label
    assert prediction.coverage == 0.8
    old = predict_image(Ensemble.from_manifest(ensemble_dir / "ensemble.json"), pixels)
    assert old.prediction_set is None and old.coverage is None


@pytest.mark.slow
def test_live_api_and_classify_tab_show_the_set(evaluated, tmp_path):
    import httpx
    from gradio_client import handle_file

    with running_app(evaluated / "ensemble.json", tmp_path / "app.log") as (client, url):
        image = (EXAMPLES / "cifar10_ship.png").read_bytes()
        answer = httpx.post(f"{url}api/predict", json={"image": base64.b64encode(image).decode()}, timeout=60).json()
        assert answer["coverage"] == 0.8 and answer["prediction_set"][0] == answer["top_k"][0]["label"]
        _, _, text = client.predict(handle_file(str(EXAMPLES / "cifar10_ship.png")), api_name="/classify")
        assert f"**Prediction set:** {set_words(answer['prediction_set'])}, with 80% coverage" in text
