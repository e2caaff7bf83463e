"""Labels that are probably wrong (`evaluate.py --label-issues`): confident learning (cleanlab's
`find_label_issues`, ranked by `rank.get_label_quality_scores`) on the calibrated ensemble's probabilities for the
validation and test images, which no member trained on; written as `label_issues.csv` and a gallery of the top
ones, for review in the labeller (`python -m vision_ensemble.labeler FOLDER --review label_issues.csv`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..config import GALLERY_ERRORS
from ..data import ImageArrays, subset_indices
from .calibration import apply_temperature

ISSUE_COLUMNS = ["file", "split", "given_label", "suggested_label", "score"]
GALLERY_ISSUES = 2 * GALLERY_ERRORS


def find_issues(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the probably wrong labels, most likely wrong first, and every label's score (1 - cleanlab's
    self-confidence label quality: the probability mass the ensemble puts away from the given label)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return np.asarray(flagged, dtype=np.int64), 1 - get_label_quality_scores(labels, probs)


def split_files(arrays: ImageArrays, max_samples: int | None, seed: int) -> list[str]:
    """The files behind `evaluation_batch(arrays, max_samples, seed)`'s images, in its order."""
    keep = subset_indices(len(arrays), max_samples, seed)
    return (arrays if keep is None else arrays.subset(keep)).files()


def report_label_issues(report: dict, splits: dict[str, tuple], weights: np.ndarray, temperature: float,
                        output_dir: Path) -> list[Path]:
    """`splits`: name -> (member probabilities (M, N, C), labels, files, uint8 NCHW images).  Ranks the labels of
    all of them together (more images, better per-class thresholds), writes label_issues.csv and
    label_issues.png, and puts the counts per split in `report["label_issues"]`."""
    class_names = report["class_names"]
    probs = np.concatenate([apply_temperature(np.tensordot(weights, member, axes=1), temperature)
                            for member, *_ in splits.values()])
    labels = np.concatenate([split[1] for split in splits.values()])
    files = [f for split in splits.values() for f in split[2]]
    names = [name for name, split in splits.items() for _ in split[1]]
    flagged, score = find_issues(probs, labels)
    rows = [{"file": files[i], "split": names[i], "given_label": class_names[labels[i]],
             "suggested_label": class_names[int(probs[i].argmax())], "score": round(float(score[i]), 4)}
            for i in flagged]
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = output_dir / "label_issues.csv", output_dir / "label_issues.png"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ISSUE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    report["label_issues"] = {"file": csv_path.name, **{name: sum(names[i] == name for i in flagged)
                                                         for name in splits}}
    within = [i for split in splits.values() for i in range(len(split[1]))]  # index inside its split
    images = [splits[names[i]][3][within[i]] for i in flagged[:GALLERY_ISSUES]]
    _gallery(rows[:GALLERY_ISSUES], images, png_path)
    return [csv_path, png_path]


def _gallery(rows: list[dict], images: list, path: Path) -> Path:
    from ..plots import plt, save

    columns, rows_shown = 4, max(1, -(-len(rows) // 4))
    fig, axes = plt.subplots(rows_shown, columns, figsize=(2.6 * columns, 2.9 * rows_shown), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, image in zip(axes.flat, rows, images):
        pixels = np.asarray(image).transpose(1, 2, 0)
        ax.imshow(pixels, interpolation="nearest" if pixels.shape[0] <= 64 else "antialiased")
        ax.set_title(f"{Path(row['file']).name} ({row['split']})\nlabelled {row['given_label']}, "
                     f"looks like {row['suggested_label']}\nscore {row['score']:.2f}", fontsize=7)
    fig.suptitle(f"Labels most likely wrong ({len(rows)} shown; all in label_issues.csv)" if rows else
                 "No label flagged as probably wrong", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save(fig, path)
