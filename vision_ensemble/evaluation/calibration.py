"""Calibration: temperature scaling of probabilities fitted on the validation split, and the numbers that say
how well confidence matches accuracy (negative log-likelihood, reliability bins, expected calibration error,
top-k accuracy)."""

from __future__ import annotations

import numpy as np


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL (searched on log T in [1/20, 20])."""
    from scipy.optimize import minimize_scalar  # not at import: training imports this module and never fits
    result = minimize_scalar(lambda log_t: nll(apply_temperature(probs, np.exp(log_t)), labels),
                             bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    """Per equal-width confidence bin: mean confidence, accuracy, count."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    mean_conf = np.bincount(bins, confidence, n_bins) / np.maximum(count, 1)
    accuracy = np.bincount(bins, correct, n_bins) / np.maximum(count, 1)
    return mean_conf, accuracy, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    conf, acc, count = calibration_bins(probs, labels, n_bins)
    return float(np.sum(count * np.abs(conf - acc)) / count.sum())


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)) * 100)
