"""Conformal prediction sets: instead of one class, the classes the ensemble cannot rule out, chosen so that the
set holds the true class for a stated share of images (the coverage, e.g. 90%).  Split conformal: a cut-off on a
score is calibrated on the validation split's calibrated probabilities, and guarantees that coverage on new
images from the same distribution (at least the level, at most 1/(n+1) above it for n validation images).

Scores (the lower, the more plausible a label): LAC is 1 - p (Sadinle et al. 2019); APS the probability of the
labels more probable than it (Romano et al. 2020, in its non-randomised form whose sets always hold the top
class); RAPS adds a penalty per rank past `k_reg` (Angelopoulos et al. 2021).  Written here rather than called
from MAPIE because the Space applies the stored rule to one image at a time, deterministically, without a
fitted estimator object; tests/test_conformal.py checks the scores, cut-offs and sets against MAPIE's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..config import (CONFORMAL_SCORES, COVERAGE_CURVE_LEVELS, DEFAULT_CONFORMAL_SCORE, DEFAULT_COVERAGE,
                      DEFAULT_SEED, RAPS_LAMBDAS, RAPS_TUNING_SHARE)


class ConformalError(ValueError):
    """A coverage level the validation split cannot calibrate, or an unknown score."""


@dataclass
class ConformalRule:
    """Predict the set of labels whose `score` is at most `cutoff`; calibrated for `coverage` on
    `validation_size` validation images (RAPS: penalty `penalty` per rank past `k_reg`)."""

    score: str
    cutoff: float
    coverage: float
    validation_size: int
    k_reg: int = 0
    penalty: float = 0.0

    def label_scores(self, probs: np.ndarray) -> np.ndarray:
        return label_scores(probs, self.score, self.k_reg, self.penalty)

    def sets(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) bool: which labels are in each image's prediction set."""
        return self.label_scores(probs) <= self.cutoff

    def to_dict(self) -> dict:
        return asdict(self)


def label_scores(probs: np.ndarray, score: str, k_reg: int = 0, penalty: float = 0.0) -> np.ndarray:
    """(N, C) non-conformity score of every label for probabilities (N, C)."""
    if score == "lac":
        return 1.0 - probs
    if score not in ("aps", "raps"):
        raise ConformalError(f"unknown conformal score '{score}'; choose one of: {', '.join(CONFORMAL_SCORES)}")
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    above = np.cumsum(ranked, axis=1) - ranked  # probability of the labels ranked before each
    if score == "raps":
        above = above + penalty * np.maximum(np.arange(1, probs.shape[1] + 1) - k_reg, 0)
    scores = np.empty_like(above)
    np.put_along_axis(scores, order, above, axis=1)
    return scores


def conformal_rank(n: int, coverage: float) -> int:
    """The order statistic (1-based) of n calibration scores that guarantees `coverage`: ceil((n + 1) coverage)."""
    return math.ceil((n + 1) * coverage - 1e-9)  # the tolerance keeps e.g. (99 + 1) * 0.9 at 90, not 91


def calibration_problem(n: int, coverage: float, score: str = DEFAULT_CONFORMAL_SCORE) -> str | None:
    """Why `n` validation images cannot calibrate `coverage`, in words; None when they can."""
    if not 0 < coverage < 1:
        return f"coverage must be between 0 and 1 (e.g. 0.9), not {coverage}"
    tuning = int(round(n * RAPS_TUNING_SHARE)) if score == "raps" else None
    if any(conformal_rank(part, coverage) > part for part in ([tuning, n - tuning] if tuning is not None else [n])):
        return (f"{n} validation images cannot calibrate {coverage:.0%} coverage: it needs at least "
                f"{math.ceil(coverage / (1 - coverage) - 1e-9)}; lower --coverage or use more validation images")
    return None


def conformal_cutoff(true_scores: np.ndarray, coverage: float) -> float:
    problem = calibration_problem(len(true_scores), coverage)
    if problem:
        raise ConformalError(problem)
    k = conformal_rank(len(true_scores), coverage)
    return float(np.partition(true_scores, k - 1)[k - 1])


def _true_scores(probs, labels, score, k_reg=0, penalty=0.0) -> np.ndarray:
    return label_scores(probs, score, k_reg, penalty)[np.arange(len(labels)), labels]


def calibrate(probs: np.ndarray, labels: np.ndarray, coverage: float = DEFAULT_COVERAGE,
              score: str = DEFAULT_CONFORMAL_SCORE, seed: int = DEFAULT_SEED) -> tuple[ConformalRule, np.ndarray]:
    """The rule for validation probabilities (N, C) and labels, and the calibration images' true-label scores.
    RAPS first holds out a seeded RAPS_TUNING_SHARE of the images to choose k_reg (the rank of the true label
    at the coverage level) and the penalty (of RAPS_LAMBDAS, the smallest mean set size there)."""
    label_scores(probs[:1], score)  # an unknown score fails here, before any work
    k_reg, penalty = 0, 0.0
    if score == "raps":
        order = np.random.default_rng(seed).permutation(len(labels))
        tune, rest = np.split(order, [int(round(len(labels) * RAPS_TUNING_SHARE))])  # as calibration_problem
        ranks = (probs[tune] > probs[tune, labels[tune]][:, None]).sum(axis=1) + 1
        k_reg = int(conformal_cutoff(ranks.astype(float), coverage))
        sizes = []
        for candidate in RAPS_LAMBDAS:
            cut = conformal_cutoff(_true_scores(probs[tune], labels[tune], score, k_reg, candidate), coverage)
            sizes.append((label_scores(probs[tune], score, k_reg, candidate) <= cut).sum(axis=1).mean())
        penalty = float(RAPS_LAMBDAS[int(np.argmin(sizes))])
        probs, labels = probs[rest], labels[rest]
    true_scores = _true_scores(probs, labels, score, k_reg, penalty)
    rule = ConformalRule(score, conformal_cutoff(true_scores, coverage), float(coverage), len(labels), k_reg, penalty)
    return rule, true_scores


def set_report(rule: ConformalRule, probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Empirical coverage (overall, per class, by set size), mean set size, singleton and empty shares."""
    sets = rule.sets(probs)
    sizes = sets.sum(axis=1)
    covered = sets[np.arange(len(labels)), labels]
    by_size = {int(s): {"images": int((sizes == s).sum()), "coverage": float(covered[sizes == s].mean())}
               for s in np.unique(sizes)}
    return {"coverage": float(covered.mean()), "mean_set_size": float(sizes.mean()),
            "singletons": float((sizes == 1).mean()), "empty": float((sizes == 0).mean()),
            "per_class_coverage": {name: float(covered[labels == c].mean()) if (labels == c).any() else None
                                   for c, name in enumerate(class_names)},
            "by_set_size": by_size}


def coverage_curve(rule: ConformalRule, calibration_scores: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                   levels: np.ndarray | None = None) -> dict:
    """Test coverage and mean set size at each level, from one sort of the calibration scores and one of the test
    images' label scores (RAPS keeps the rule's k_reg and penalty at every level)."""
    levels = np.round(np.linspace(*COVERAGE_CURVE_LEVELS, 50), 4) if levels is None else np.asarray(levels)
    n = len(calibration_scores)
    ranks = np.array([conformal_rank(n, level) for level in levels])
    levels = levels[ranks <= n]
    cutoffs = np.sort(calibration_scores)[ranks[ranks <= n] - 1]
    scores = rule.label_scores(probs)
    true_sorted = np.sort(scores[np.arange(len(labels)), labels])
    all_sorted = np.sort(scores, axis=None)
    return {"levels": levels.tolist(),
            "coverage": (np.searchsorted(true_sorted, cutoffs, side="right") / len(labels)).tolist(),
            "mean_set_size": (np.searchsorted(all_sorted, cutoffs, side="right") / len(labels)).tolist()}


def set_words(labels: list[str]) -> str:
    """'cat', 'cat or dog', 'cat, dog or frog'; 'no class' for an empty set."""
    if not labels:
        return "no class"
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} or {labels[-1]}"


def set_sentence(labels: list[str], coverage: float) -> str:
    """The set and what its coverage means, in one line for someone who is not a statistician."""
    return (f"{set_words(labels)}, with {coverage:.0%} coverage (sets built this way hold the true class for "
            f"{coverage:.0%} of images like the validation images)")


def ranked_set(rule: ConformalRule, probs: np.ndarray, class_names: list[str]) -> list[str]:
    """The prediction set of one image's probabilities (C,), most probable class first."""
    members = rule.sets(probs[None])[0]
    return [class_names[i] for i in np.argsort(-probs, kind="stable") if members[i]]


def conformal_summary(rule: ConformalRule, calibration_scores: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                      class_names: list[str], flagged: np.ndarray) -> dict:
    """The report's `conformal` section: the rule, the sets on the test split (`set_report`), the coverage curve,
    and the mean set size where the uncertainty hint fires and where it does not (the two should agree)."""
    sizes = rule.sets(probs).sum(axis=1)
    return {**rule.to_dict(), "test": set_report(rule, probs, labels, class_names),
            "curve": coverage_curve(rule, calibration_scores, probs, labels),
            "mean_set_size_flagged": float(sizes[flagged].mean()) if flagged.any() else None,
            "mean_set_size_unflagged": float(sizes[~flagged].mean()) if (~flagged).any() else None}
