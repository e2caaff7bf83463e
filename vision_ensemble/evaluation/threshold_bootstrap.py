"""Bootstrap confidence intervals for the threshold optimizer: how much the optimal threshold, and every metric at
it, would move on another sample of the same size.  Each replicate reweights the rows with Poisson(1) weights (the
Poisson bootstrap: resampling with replacement, the sample size left free) and runs the same exact optimisation
as `thresholds.optimize`; the interval is the percentile interval of the replicates' answers.

Why not resample and re-sort: the sweep's order does not change between replicates, only the counts at each
distinct score do, so one Numba kernel per replicate draws the weights, accumulates TP and FP down the scores
and keeps the best candidate, in parallel over replicates.  Weights come from a counter-based generator
(SplitMix64 of seed, replicate and row position, 32 bits per row): the answer is the same for any thread count
or chunking, and `replicate_row_weights` hands the very same weights to a test's slow reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..config import BOOTSTRAP_CHUNK, DEFAULT_BOOTSTRAP_CONFIDENCE, DEFAULT_BOOTSTRAP_SEED
from .thresholds import (OBJECTIVES, TABLE_METRICS, ObjectiveParams, ScoredLabels, ThresholdError, ThresholdResult,
                         metrics_from_counts)

OBJECTIVE_CODES = {name: code for code, name in enumerate(OBJECTIVES)}
_POISSON1_CDF = np.append(np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1)) for k in range(20)])[:-1], 2.0)


@dataclass
class BootstrapIntervals:
    replicates: int
    confidence: float
    seed: int
    thresholds: np.ndarray         # (replicates,) each replicate's optimal threshold, NaN where none is feasible
    metrics: dict[str, np.ndarray]  # TABLE_METRICS at each replicate's optimum
    intervals: dict[str, list[float]]  # "threshold" and every metric -> [low, high]

    @property
    def band(self) -> tuple[float, float, float]:
        """(low, high, confidence) of the optimal threshold: `curve_figures`'s band."""
        return (*self.intervals["threshold"], self.confidence)

    @property
    def infeasible(self) -> int:
        return int(np.isnan(self.thresholds).sum())

    def summary(self) -> dict:
        return {"replicates": self.replicates, "confidence": self.confidence, "seed": self.seed,
                "infeasible_replicates": self.infeasible, "method": "percentile, Poisson(1) row weights",
                "intervals": self.intervals}


GOLDEN, MIX1, MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
S30, S27, S31, S32, LOW32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32), np.uint64(0xFFFFFFFF)
UNIT = 1.0 / 4294967296.0  # 2**-32: 32 random bits to a double in [0, 1)


@njit(inline="always")
def _mix(z):
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    return z ^ (z >> S31)


@njit(inline="always")
def _stream_key(seed, replicate):
    return _mix(_mix(np.uint64(seed) * GOLDEN + np.uint64(replicate)) + GOLDEN)


@njit(inline="always")
def _poisson1(u, cdf):
    """Poisson(1) by inverse CDF, without branches for k < 8 (a mispredicted branch per row would cost more
    than the rest of the row's work); the loop only runs past that, for one row in 100,000."""
    k = ((u >= cdf[0]) + (u >= cdf[1]) + (u >= cdf[2]) + (u >= cdf[3]) + (u >= cdf[4]) + (u >= cdf[5])
         + (u >= cdf[6]) + (u >= cdf[7]))
    while u >= cdf[k]:
        k += 1
    return k


@njit(inline="always")
def _add_weights(key, slot, weights, cdf):
    """weights[slot[p]] += row p's Poisson(1) weight, for the rows p in sweep order; one 64-bit SplitMix64 output
    (of the replicate's key and the row pair) gives two rows their 32-bit uniforms."""
    n = len(slot)
    for pair in range((n + 1) // 2):
        bits = _mix(key + np.uint64(pair + 1) * GOLDEN)
        weights[slot[2 * pair]] += _poisson1((bits >> S32) * UNIT, cdf)
        if 2 * pair + 1 < n:
            weights[slot[2 * pair + 1]] += _poisson1((bits & LOW32) * UNIT, cdf)


@njit(inline="always")
def _div(a, b):
    return a / b if b != 0 else 0.0


@njit(inline="always")
def _objective(code, tp, fp, fn, tn, beta, cost_fp, cost_fn, min_precision, min_recall):
    # thresholds.metrics_from_counts's formulas in the same operation order: the same floats, so the same argmax
    # as optimize() on the resampled rows (tests/test_thresholds.py checks it replicate by replicate).
    if code == 0:
        return _div(2 * tp, 2 * tp + fp + fn)
    if code == 1:
        b2 = beta ** 2
        return _div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)
    if code == 2:
        return _div(tp, tp + fn) + _div(tn, tn + fp) - 1
    if code == 3:
        return (_div(tp, tp + fn) + _div(tn, tn + fp)) / 2
    if code == 4:
        return _div(tp + tn, tp + fp + fn + tn)
    if code == 5:
        return _div(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    if code == 6:
        return -_div(cost_fp * fp + cost_fn * fn, tp + fp + fn + tn)
    if code == 7:
        return _div(tp, tp + fn) if _div(tp, tp + fp) >= min_precision else -np.inf
    return _div(tp, tp + fp) if _div(tp, tp + fn) >= min_recall else -np.inf


@njit(parallel=True, cache=True)
def _replicates(slot, cells, seed, first, count, code, beta, cost_fp, cost_fn, min_precision, min_recall, cdf):
    """Per replicate: index of the best distinct score (-1: none feasible); TP, FP there and P, N in all.
    Rows come in sweep order (score descending); `slot` is 2 * (index of the row's distinct score) + its class."""
    best_index = np.full(count, -1, np.int64)
    counts = np.zeros((count, 4), np.int64)
    for r in prange(count):
        weights = np.zeros(2 * cells, np.int32)  # [2i] negatives, [2i + 1] positives at distinct score i
        _add_weights(_stream_key(seed, first + r), slot, weights, cdf)
        total_neg, total_pos = weights[0::2].sum(), weights[1::2].sum()
        tp, fp, best, best_at = 0, 0, -np.inf, -1
        for i in range(cells):
            tp += weights[2 * i + 1]
            fp += weights[2 * i]
            value = _objective(code, float(tp), float(fp), float(total_pos - tp), float(total_neg - fp), beta,
                               cost_fp, cost_fn, min_precision, min_recall)
            # a score no row carries in this replicate is not a candidate (a select, not a branch)
            value = value if weights[2 * i] + weights[2 * i + 1] > 0 else -np.inf
            if value > best:  # strictly: the first maximum, the highest threshold, as np.argmax
                best, best_at = value, i
        if best_at >= 0:
            best_index[r] = best_at
            counts[r, 0] = weights[1:2 * best_at + 2:2].sum()
            counts[r, 1] = weights[0:2 * best_at + 2:2].sum()
        counts[r, 2], counts[r, 3] = total_pos, total_neg
    return best_index, counts


@njit(cache=True)
def _row_weights(seed, replicate, n, cdf):
    weights = np.zeros(n, np.int64)
    _add_weights(_stream_key(seed, replicate), np.arange(n), weights, cdf)
    return weights


def _cells(data: ScoredLabels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct scores descending, each row's slot: 2 * its score's index among them + its class, in sweep
    order; that order)."""
    order = np.argsort(-data.scores, kind="stable")
    scores = data.scores[order]
    new_score = np.r_[True, scores[1:] != scores[:-1]]
    slot = 2 * (np.cumsum(new_score, dtype=np.int32) - 1) + data.y[order]
    return scores[new_score], slot.astype(np.int32), order


def replicate_row_weights(data: ScoredLabels, replicate: int, seed: int = DEFAULT_BOOTSTRAP_SEED) -> np.ndarray:
    """The Poisson(1) weight each row of `data` gets in `replicate`: how many times it is drawn there."""
    *_, order = _cells(data)
    weights = np.empty(len(order), np.int64)
    weights[order] = _row_weights(seed, replicate, len(order), _POISSON1_CDF)
    return weights


def bootstrap(result: ThresholdResult, replicates: int, confidence: float = DEFAULT_BOOTSTRAP_CONFIDENCE,
              seed: int = DEFAULT_BOOTSTRAP_SEED, params: ObjectiveParams | None = None,
              progress=None) -> BootstrapIntervals:
    """Percentile intervals for `result`'s optimal threshold and its metrics from `replicates` Poisson-bootstrap
    replicates; `progress(done, total)` is called after each chunk of replicates."""
    if replicates < 1:
        raise ThresholdError("the number of bootstrap replicates must be at least 1")
    if not 0 < confidence < 1:
        raise ThresholdError("the confidence level must be between 0 and 1 (e.g. 0.95)")
    params = params or ObjectiveParams()
    thresholds, slot, _ = _cells(result.data)
    best, counts = [], []
    for first in range(0, replicates, BOOTSTRAP_CHUNK):
        count = min(BOOTSTRAP_CHUNK, replicates - first)
        b, c = _replicates(slot, len(thresholds), seed, first, count, OBJECTIVE_CODES[result.objective], params.beta,
                      params.cost_fp, params.cost_fn, params.min_precision, params.min_recall, _POISSON1_CDF)
        best.append(b)
        counts.append(c)
        if progress is not None:
            progress(first + count, replicates)
    best, (tp, fp, total_pos, total_neg) = np.concatenate(best), np.concatenate(counts).T
    feasible = best >= 0
    chosen = np.where(feasible, thresholds[np.maximum(best, 0)], np.nan)
    metrics = metrics_from_counts(tp, fp, total_pos - tp, total_neg - fp, params)
    metrics = {name: np.where(feasible, metrics[name], np.nan) for name in TABLE_METRICS}
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for name, values in {"threshold": chosen, **metrics}.items():
        low, high = np.nanpercentile(values, [tail, 100 - tail]) if feasible.any() else (np.nan, np.nan)
        intervals[name] = [float(low), float(high)]
    return BootstrapIntervals(replicates, confidence, seed, chosen, metrics, intervals)


#: The metric each objective's value is (the constrained objectives report their free metric).
VALUE_METRIC = {**{name: name for name in OBJECTIVES}, "recall_at_precision": "recall",
                "precision_at_recall": "precision"}


def interval_line(result: ThresholdResult, intervals: BootstrapIntervals) -> str:
    """The intervals in one sentence a non-statistician can read."""
    low, high = intervals.intervals["threshold"]
    metric = VALUE_METRIC[result.objective]
    m_low, m_high = intervals.intervals[metric]
    skipped = f"; {intervals.infeasible:,} resamples had no feasible threshold" if intervals.infeasible else ""
    return (f"How sure is it? Redoing the search on {intervals.replicates:,} resamples of your rows, "
            f"{intervals.confidence:.0%} of the best thresholds fell between {low:.4g} and {high:.4g}, and "
            f"{metric} there between {m_low:.4f} and {m_high:.4f}{skipped}.")
