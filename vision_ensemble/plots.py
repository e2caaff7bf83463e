"""Figures people would rather look at than read: training curves, confusion matrix, reliability diagram,
threshold curves, error gallery, accuracy under attack.  All return or save matplotlib figures (Agg backend:
no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_curves(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train (MixUp/CutMix targets)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["val_top1"] for r in rows], "o-", label="val top-1")
    ax_acc.plot(epochs, [r["val_top5"] for r in rows], "o-", label="val top-5")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Validation accuracy")
    ax_acc.legend()
    fig.tight_layout()
    return save(fig, out_png)


def confusion_matrix_figure(matrix: np.ndarray, class_names: list[str], title: str = "Confusion matrix"):
    """Row-normalised colours, raw counts written in the cells."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 2), max(3.5, 0.55 * n + 1.5)))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def reliability_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title="Reliability diagram"):
    """`curves`: name -> (bin confidence, bin accuracy, bin count), e.g. before and after temperature scaling."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, (conf, acc, count) in curves.items():
        keep = count > 0
        ax.plot(conf[keep], acc[keep], "o-", label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def error_gallery_figure(rows: list[tuple], title: str):
    """`rows`: (image, overlay 1, overlay 2, caption 1, caption 2, caption 3), one row of three panels each."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows) + 0.6), squeeze=False)
    for row, (*pictures, caption_a, caption_b, caption_c) in zip(axes, rows):
        for ax, picture, caption in zip(row, pictures, (caption_a, caption_b, caption_c)):
            ax.imshow(picture, interpolation="nearest" if picture.shape[0] <= 64 else "antialiased")
            ax.set_title(caption, fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title above the first row
    return fig


def robustness_figure(result: dict):
    """Accuracy versus attack radius, FGSM and PGD side by side, one line per member and the ensemble."""
    epsilons = result["epsilons_255"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, attack in zip(axes, ("fgsm", "pgd")):
        for name, accuracies in result[attack].items():
            ax.plot(epsilons, accuracies, "o-", lw=2.5 if name == "ensemble" else 1.5, label=name)
        ax.set(xlabel="epsilon (x 1/255, L-inf, pixel space)", title=f"{attack.upper()} ({result['samples']} test images)",
               xticks=epsilons)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def coverage_figure(curve: dict, chosen: float, score: str):
    """Conformal prediction sets: test coverage (against the level asked for) and mean set size, level by level."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    levels = np.asarray(curve["levels"])
    ax.plot(levels, levels, "k--", lw=1, label="level asked for")
    ax.plot(levels, curve["coverage"], "o-", ms=3, color="C0", label="test coverage")
    ax.axvline(chosen, color="C3", ls=":", label=f"chosen ({chosen:.0%})")
    ax.set(xlabel="coverage level asked for", ylabel="share of test images whose set holds the true class",
           title=f"Conformal prediction sets ({score}), test split")
    sizes = ax.twinx()
    sizes.plot(levels, curve["mean_set_size"], "s-", ms=3, color="C1", label="mean set size")
    sizes.set_ylabel("mean set size (classes)", color="C1")
    lines = ax.get_legend_handles_labels(), sizes.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def save(fig, path: str | Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
