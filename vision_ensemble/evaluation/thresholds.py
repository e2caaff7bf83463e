"""Decision-threshold optimizer for binary-classifier outputs: read a CSV of labels and scores, find the
threshold that optimises an objective exactly, and report metrics, curves and plots.

Exact search: every distinct score t is a candidate (predict positive where score >= t).  The positives'
and the negatives' scores are sorted separately; binary searches then give TP and FP at every candidate
at once, O(n log n).  scikit-learn's metrics are the reference in the tests;
`benchmarks/thresholds_10m.py` measures why this is not scikit-learn's own sweep.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import MAX_CSV_ROWS

LABEL_COLUMNS = ("y_true", "label", "labels", "target", "actual", "truth", "ground_truth", "gt", "class",
                 "y", "true_label", "is_positive", "outcome")
SCORE_COLUMNS = ("score", "scores", "y_score", "y_prob", "y_proba", "y_pred_proba", "prob", "proba",
                 "probability", "confidence", "pred_prob", "prediction", "pred", "logit", "y_pred", "output")
TRUE_WORDS = {"1", "true", "t", "yes", "y", "pos", "positive"}
FALSE_WORDS = {"0", "false", "f", "no", "n", "neg", "negative"}

OBJECTIVES = {
    "f1": "F1 score",
    "fbeta": "F-beta score",
    "youden": "Youden's J (TPR - FPR)",
    "balanced_accuracy": "balanced accuracy",
    "accuracy": "accuracy",
    "mcc": "Matthews correlation coefficient",
    "cost": "expected cost per sample (minimised)",
    "recall_at_precision": "recall, subject to precision >= min_precision",
    "precision_at_recall": "precision, subject to recall >= min_recall",
}


class ThresholdError(ValueError):
    """Bad input for the optimizer, with a message fit to show a person."""


@dataclass
class ScoredLabels:
    y: np.ndarray          # bool, True = positive class
    scores: np.ndarray     # float64, finite
    label_column: str
    score_column: str
    positive_label: str
    negative_label: str


@dataclass
class Sweep:
    """Counts at every distinct score, thresholds in descending order."""
    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    @property
    def fn(self):
        return self.positives - self.tp

    @property
    def tn(self):
        return self.negatives - self.fp


@dataclass
class ObjectiveParams:
    beta: float = 1.0
    cost_fp: float = 1.0
    cost_fn: float = 1.0
    min_precision: float = 0.9
    min_recall: float = 0.9


# --- reading -------------------------------------------------------------------------------------------

def _pick(columns: list[str], wanted: str | None, known: tuple[str, ...], role: str, option: str) -> str:
    if wanted is not None:
        for c in columns:
            if c == wanted or c.strip().lower() == wanted.strip().lower():
                return c
        raise ThresholdError(f"no {role} column named '{wanted}'; columns are: {', '.join(columns)}")
    lowered = {c.strip().lower(): c for c in columns}
    for name in known:
        if name in lowered:
            return lowered[name]
    raise ThresholdError(f"no recognisable {role} column among: {', '.join(columns)}. "
                         f"Name it with {option} (recognised: {', '.join(known[:8])}, ...)")


def _label_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()


def _binary_labels(labels, positive: str | None, column: str) -> tuple[np.ndarray, str, str]:
    """Map a label column (pyarrow) to booleans: 0/1, true/false, yes/no, or two strings with a named positive."""
    import pyarrow.compute as pc

    distinct = sorted(pc.unique(labels).to_pylist(), key=_label_text)  # hash-based: no sort of the whole column
    texts = [_label_text(v) for v in distinct]
    if len(distinct) > 2:
        shown = ", ".join(texts[:6]) + (", ..." if len(texts) > 6 else "")
        raise ThresholdError(f"label column '{column}' has {len(distinct)} values ({shown}); a binary classifier needs two")
    if len(distinct) < 2:
        raise ThresholdError(f"label column '{column}' holds one class only ({texts[0]}); both classes are needed")
    lowered = [t.lower() for t in texts]
    if positive is not None:
        if positive.strip().lower() not in lowered:
            raise ThresholdError(f"positive class '{positive}' is not a label; labels are {texts[0]} and {texts[1]}")
        pos_index = lowered.index(positive.strip().lower())
    elif lowered[0] in FALSE_WORDS and lowered[1] in TRUE_WORDS:
        pos_index = 1
    elif lowered[1] in FALSE_WORDS and lowered[0] in TRUE_WORDS:
        pos_index = 0
    else:
        raise ThresholdError(f"labels are '{texts[0]}' and '{texts[1]}'; say which is positive "
                             "(--positive / the positive-class field)")
    y = pc.equal(labels, distinct[pos_index]).to_numpy()
    return np.asarray(y, dtype=bool), texts[pos_index], texts[1 - pos_index]


def _sniff_delimiter(sample: bytes) -> str:
    text = sample.decode("utf-8", errors="replace")
    try:
        return csv.Sniffer().sniff(text.split("\n", 20)[0] + "\n" + "\n".join(text.split("\n")[1:20]),
                                   delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_table(source: str | Path | bytes, max_rows: int = MAX_CSV_ROWS):
    """The CSV as a pyarrow Table (multi-threaded parse), delimiter sniffed; ThresholdError on bad files."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if isinstance(source, bytes):
        sample = source[:65536]
    else:
        try:
            with open(source, "rb") as f:
                sample = f.read(65536)
        except FileNotFoundError:
            raise ThresholdError(f"file not found: {source}") from None
        except IsADirectoryError:
            raise ThresholdError(f"{source} is a folder, not a CSV file") from None
    if not sample.strip():
        raise ThresholdError("the file is empty")
    if b"\x00" in sample:
        raise ThresholdError("the file is binary, not a CSV text file")
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # a multi-byte character cut by the sample's end is fine
            raise ThresholdError("the file is not UTF-8 text (is it a spreadsheet or a binary file?)") from None
    delimiter = _sniff_delimiter(sample)
    try:
        table = pacsv.read_csv(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                               parse_options=pacsv.ParseOptions(delimiter=delimiter),
                               convert_options=pacsv.ConvertOptions(null_values=[""], strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ThresholdError(f"could not parse the file as CSV ({str(exc).splitlines()[0][:200]})") from None
    if table.num_rows == 0:
        raise ThresholdError("the file has a header but no data rows")
    if table.num_rows > max_rows:
        raise ThresholdError(f"the file has {table.num_rows:,} rows; the limit is {max_rows:,}")
    return table


def detect_columns(columns: list[str], label_column: str | None = None, score_column: str | None = None) -> tuple[str, str]:
    label = _pick(columns, label_column, LABEL_COLUMNS, "label", "--label-col")
    score = _pick(columns, score_column, SCORE_COLUMNS, "score", "--score-col")
    if label == score:
        raise ThresholdError(f"the label and score columns are the same column ('{label}')")
    return label, score


def scored_labels_from_table(table, label_column=None, score_column=None, positive=None) -> ScoredLabels:
    import pyarrow as pa
    import pyarrow.compute as pc

    label_name, score_name = detect_columns(table.column_names, label_column, score_column)
    labels, scores = table.column(label_name), table.column(score_name)
    if labels.null_count:
        raise ThresholdError(f"{labels.null_count:,} row(s) have no label in column '{label_name}'")
    if scores.null_count:
        raise ThresholdError(f"{scores.null_count:,} row(s) have no score in column '{score_name}'")
    if not (pa.types.is_integer(scores.type) or pa.types.is_floating(scores.type)):
        try:
            scores = pc.cast(scores, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ThresholdError(f"score column '{score_name}' is not numeric") from None
    score_values = scores.to_numpy().astype(np.float64, copy=False)
    finite = np.isfinite(score_values)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ThresholdError(f"{len(bad):,} score(s) in '{score_name}' are NaN or infinite "
                             f"(first on data row {bad[0] + 1})")
    if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        labels = pc.utf8_trim_whitespace(labels)
    y, pos, neg = _binary_labels(labels, positive, label_name)
    return ScoredLabels(y, score_values, label_name, score_name, pos, neg)


def read_scores_csv(source, label_column=None, score_column=None, positive=None,
                    max_rows: int = MAX_CSV_ROWS) -> ScoredLabels:
    return scored_labels_from_table(read_table(source, max_rows), label_column, score_column, positive)


# --- the exact sweep -----------------------------------------------------------------------------------

def _distinct(sorted_values: np.ndarray) -> np.ndarray:
    keep = np.empty(len(sorted_values), dtype=bool)
    keep[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=keep[1:])
    return sorted_values[keep]


def sweep(y: np.ndarray, scores: np.ndarray) -> Sweep:
    """TP and FP at every distinct score, as thresholds (positive where score >= t) in descending order.

    Sorting the positives' and the negatives' scores separately (a value sort, about twice as fast as the
    argsort of all scores it replaces) lets binary searches count, at each distinct score t, how many of
    each class score >= t.
    """
    positives, negatives = np.sort(scores[y]), np.sort(scores[~y])
    thresholds = np.union1d(_distinct(positives), _distinct(negatives))[::-1]
    tp = len(positives) - np.searchsorted(positives, thresholds, side="left")
    fp = len(negatives) - np.searchsorted(negatives, thresholds, side="left")
    return Sweep(thresholds, tp.astype(np.int64), fp.astype(np.int64), len(positives), len(negatives))


def _div(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def metrics_from_counts(tp, fp, fn, tn, params: ObjectiveParams | None = None) -> dict[str, np.ndarray]:
    """Every reported metric, vectorised over arrays of confusion counts (0 where undefined, like sklearn)."""
    params = params or ObjectiveParams()
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    precision, recall, specificity = _div(tp, tp + fp), _div(tp, tp + fn), _div(tn, tn + fp)
    b2 = params.beta ** 2
    mcc_den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "fpr": 1 - specificity,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "fbeta": _div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp),
        "youden": recall + specificity - 1,
        "balanced_accuracy": (recall + specificity) / 2,
        "accuracy": _div(tp + tn, n),
        "mcc": _div(tp * tn - fp * fn, mcc_den),
        "cost": _div(params.cost_fp * fp + params.cost_fn * fn, n),
    }


def objective_values(metrics: dict[str, np.ndarray], objective: str, params: ObjectiveParams) -> np.ndarray:
    """Values to maximise for `objective` (cost negated; infeasible constrained points are -inf)."""
    if objective == "cost":
        return -metrics["cost"]
    if objective == "recall_at_precision":
        return np.where(metrics["precision"] >= params.min_precision, metrics["recall"], -np.inf)
    if objective == "precision_at_recall":
        return np.where(metrics["recall"] >= params.min_recall, metrics["precision"], -np.inf)
    return metrics[objective]


@dataclass
class ThresholdResult:
    objective: str
    threshold: float
    value: float
    at_optimum: dict
    at_half: dict
    sweep: Sweep = field(repr=False)
    metrics: dict = field(repr=False)  # per candidate threshold, descending
    data: ScoredLabels = field(repr=False)

    def summary(self) -> dict:
        return {"objective": self.objective, "objective_description": OBJECTIVES[self.objective],
                "threshold": self.threshold, "value": self.value, "at_optimum": self.at_optimum,
                "at_0.5": self.at_half, "rows": int(len(self.data.y)), "positives": self.sweep.positives,
                "negatives": self.sweep.negatives, "distinct_thresholds": int(len(self.sweep.thresholds)),
                "label_column": self.data.label_column, "score_column": self.data.score_column,
                "positive_label": self.data.positive_label, "average_precision": average_precision(self.sweep),
                "roc_auc": roc_auc(self.sweep)}


def _point(tp, fp, fn, tn, params) -> dict:
    metrics = {k: float(v) for k, v in metrics_from_counts(tp, fp, fn, tn, params).items()}
    return {"confusion_matrix": {"tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn)}, **metrics}


def optimize(data: ScoredLabels, objective: str = "f1", params: ObjectiveParams | None = None) -> ThresholdResult:
    if objective not in OBJECTIVES:
        raise ThresholdError(f"unknown objective '{objective}'; choose one of: {', '.join(OBJECTIVES)}")
    params = params or ObjectiveParams()
    if objective == "fbeta" and not params.beta > 0:
        raise ThresholdError("beta must be positive")
    if objective == "cost" and (params.cost_fp < 0 or params.cost_fn < 0):
        raise ThresholdError("costs must not be negative")
    s = sweep(data.y, data.scores)
    metrics = metrics_from_counts(s.tp, s.fp, s.fn, s.tn, params)
    values = objective_values(metrics, objective, params)
    best = int(np.argmax(values))  # first maximum: the highest threshold reaching it
    if not np.isfinite(values[best]):
        bound = (f"precision >= {params.min_precision}" if objective == "recall_at_precision"
                 else f"recall >= {params.min_recall}")
        raise ThresholdError(f"no threshold reaches {bound}")
    value = float(metrics["cost"][best]) if objective == "cost" else float(values[best])
    half = data.scores >= 0.5
    tp_half = int(np.count_nonzero(half & data.y))
    fp_half = int(np.count_nonzero(half)) - tp_half
    return ThresholdResult(
        objective=objective, threshold=float(s.thresholds[best]), value=value,
        at_optimum=_point(s.tp[best], s.fp[best], s.fn[best], s.tn[best], params),
        at_half=_point(tp_half, fp_half, s.positives - tp_half, s.negatives - fp_half, params),
        sweep=s, metrics=metrics, data=data)


# --- curves --------------------------------------------------------------------------------------------

def pr_curve(s: Sweep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) in scikit-learn's `precision_recall_curve` order and convention."""
    precision = _div(s.tp, s.tp + s.fp)
    recall = _div(s.tp, s.positives)
    return np.append(precision[::-1], 1.0), np.append(recall[::-1], 0.0), s.thresholds[::-1]


def roc_curve(s: Sweep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as scikit-learn's `roc_curve(drop_intermediate=False)`."""
    fpr = np.concatenate([[0.0], _div(s.fp, s.negatives)])
    tpr = np.concatenate([[0.0], _div(s.tp, s.positives)])
    return fpr, tpr, np.concatenate([[np.inf], s.thresholds])


def roc_auc(s: Sweep) -> float:
    fpr, tpr, _ = roc_curve(s)
    return float(np.trapezoid(tpr, fpr))


def average_precision(s: Sweep) -> float:
    """Step-wise area under the PR curve, as scikit-learn's `average_precision_score`."""
    precision, recall, _ = pr_curve(s)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


# --- output --------------------------------------------------------------------------------------------

TABLE_METRICS = ("precision", "recall", "specificity", "f1", "fbeta", "accuracy", "balanced_accuracy", "mcc",
                 "youden", "cost")


def comparison_rows(result: ThresholdResult) -> list[tuple[str, float, float]]:
    """(metric, value at 0.5, value at the optimum): the confusion counts, then TABLE_METRICS."""
    half, opt = result.at_half, result.at_optimum
    rows = [(k, half["confusion_matrix"][k], opt["confusion_matrix"][k]) for k in ("tp", "fp", "fn", "tn")]
    return rows + [(k, half[k], opt[k]) for k in TABLE_METRICS]


def results_table(result: ThresholdResult, max_rows: int = 100_000):
    """Per-threshold metrics as a DataFrame (evenly subsampled past `max_rows`, the optimum always kept)."""
    import pandas as pd

    s = result.sweep
    rows = np.arange(len(s.thresholds))
    if len(rows) > max_rows:
        best = int(np.searchsorted(-s.thresholds, -result.threshold))
        rows = np.union1d(np.linspace(0, len(rows) - 1, max_rows - 1).round().astype(int), [best])
    frame = {"threshold": s.thresholds[rows], "tp": s.tp[rows], "fp": s.fp[rows], "fn": s.fn[rows],
             "tn": s.tn[rows]}
    frame.update({k: result.metrics[k][rows] for k in TABLE_METRICS})
    return pd.DataFrame(frame)


def _thin(n: int, limit: int = 4000) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))


def curve_figures(result: ThresholdResult, threshold_interval: tuple[float, float, float] | None = None) -> dict:
    """PR, ROC and metrics-vs-threshold matplotlib figures (curves thinned to a few thousand points); the last with
    the optimal threshold's bootstrap interval (low, high, confidence) as a band when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, opt = result.sweep, result.at_optimum
    figures = {}
    precision, recall, _ = pr_curve(s)
    keep = _thin(len(precision))
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.step(recall[keep], precision[keep], where="post", label=f"AP = {average_precision(s):.3f}")
    ax.plot(opt["recall"], opt["precision"], "o", color="C3", label=f"optimum (t = {result.threshold:.4g})")
    ax.plot(result.at_half["recall"], result.at_half["precision"], "s", color="C2", label="t = 0.5")
    ax.axhline(s.positives / (s.positives + s.negatives), ls=":", color="gray", label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", xlim=(0, 1.01), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    figures["pr"] = fig

    fpr, tpr, _ = roc_curve(s)
    keep = _thin(len(fpr))
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot(fpr[keep], tpr[keep], label=f"AUC = {roc_auc(s):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(opt["fpr"], opt["recall"], "o", color="C3", label="optimum")
    ax.plot(result.at_half["fpr"], result.at_half["recall"], "s", color="C2", label="t = 0.5")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    figures["roc"] = fig

    keep = _thin(len(s.thresholds))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    shown = ["precision", "recall", "f1", "balanced_accuracy", "mcc"]
    if result.objective not in shown and result.objective != "cost":
        shown.append(result.objective if result.objective in result.metrics else "accuracy")
    for name in shown:
        ax.plot(s.thresholds[keep], result.metrics[name][keep], label=name)
    ax.axvline(result.threshold, color="C3", ls="--", label=f"optimum ({result.objective})")
    if threshold_interval is not None:
        low, high, confidence = threshold_interval
        ax.axvspan(low, high, color="C3", alpha=0.15, label=f"{confidence:.0%} interval of the optimum")
    ax.set(xlabel="threshold (predict positive where score >= threshold)", ylabel="metric",
           title="Metrics vs threshold")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    figures["metrics"] = fig
    return figures
