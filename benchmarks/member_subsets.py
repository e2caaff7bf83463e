"""Which members to ship: every subset of some members, scored on the test split against a baseline subset.

    python benchmarks/member_subsets.py models/cifar10/airbench_s-* ~/runs/cifar10-cpu-avx2/airbench_s-cutout-seed5 \
        --baseline airbench_s-seed0 airbench_s-seed1 airbench_s-seed2 airbench_s-cutout-seed4

Each member is a training run's predictions.npz (or the run folder holding one), or an exported model folder, whose
flip-TTA test probabilities are then computed here (about a minute a member on 2 cores). Each subset's members are
averaged with equal weights (a screen: the shipped ensemble's weights and temperature are fitted on validation by
`evaluation/evaluate.py`, which its report then measures). Against the baseline subset, per subset: the test images
it turns right and turns wrong, and a sign test of those (is "fixed" more than a fair coin would give of the
changed answers: z, and scipy's exact two-sided p). Members of one recipe change a few hundred answers, so a
0.2-point difference can be chance; the sign test says when it is not.

How far more members can go: `--growth PLOT.png` (with `--min-size` past the member count, to skip the subsets)
adds members one at a time, in 200 random orders (the mean and range of the test top-1 after k members) and
greedily (each time the member that raises test top-1 most: chosen on the test split itself, so an optimistic
bound on any k members of these), and plots both against k.

Where the members disagree: `--agreement` counts the test images that k of the n members get right (k = 0..n) and
how many of each the equal-weight ensemble gets right, and per pair of members the share of one's errors the other
makes too (members that share most of their errors add little to each other).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
from scipy.stats import binomtest

from vision_ensemble.config import models_cache_size
from vision_ensemble.data import load_dataset
from vision_ensemble.evaluation.predictions import evaluation_batch, load_predictions
from vision_ensemble.model import Member


def member_name(path: Path) -> str:
    return path.parent.name if path.name in ("predictions.npz", "best") else path.name


def test_probabilities(paths: list[Path], data_dir: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{member name: flip-TTA test probabilities}, and the test labels they share."""
    probs, labels, images = {}, None, None
    for path in paths:
        npz = path / "predictions.npz" if path.is_dir() else path
        if npz.is_file() or not path.is_dir():  # a file, or nothing there: load_predictions says which
            run = load_predictions(npz)
            p, run_labels = run.test_probs_flip, run.test_labels
        else:  # an exported model folder
            member = Member.load(str(path), device="cpu")
            if images is None:  # the training cache of the first such member; only its test split is read
                data = load_dataset(data_dir, None, cache_size=models_cache_size([member.data_config]))
                images, test_labels = evaluation_batch(data.test, None, 0)
            p, run_labels = member.probabilities(images, tta_flip=True, batch_size=500).numpy(), test_labels
        if labels is not None and not np.array_equal(labels, run_labels):
            raise SystemExit(f"{path}: predicted on other test images than {paths[0]}")
        labels = run_labels
        probs[member_name(path)] = p.astype(np.float64)
    return probs, labels


def subset_table(probs: dict[str, np.ndarray], labels: np.ndarray, baseline: list[str], min_size: int = 1) -> list[dict]:
    """One row per subset of at least `min_size` members: its equal-weight top-1 (%) and, against `baseline`'s
    equal-weight answers, the images fixed and broken, the sign test's z and exact two-sided p."""
    def right(names) -> np.ndarray:
        return np.mean([probs[n] for n in names], axis=0).argmax(1) == labels

    base = right(baseline)
    rows = []
    for size in range(min_size, len(probs) + 1):
        for names in itertools.combinations(probs, size):
            r = right(names)
            fixed, broken = int((r & ~base).sum()), int((base & ~r).sum())
            changed = fixed + broken
            rows.append({"members": list(names), "top1": 100 * float(r.mean()), "fixed": fixed, "broken": broken,
                         "z": (fixed - broken) / changed ** 0.5 if changed else 0.0,
                         "p": binomtest(fixed, changed).pvalue if changed else 1.0})
    return rows


def growth(probs: dict[str, np.ndarray], labels: np.ndarray, orders: int = 200, seed: int = 0) -> list[dict]:
    """Per ensemble size k (1..n): the equal-weight test top-1 (%) of the first k members over `orders` random
    orders (mean, min, max), and that of k members added greedily, each the one that raises test top-1 most."""
    names, rng = list(probs), np.random.default_rng(seed)
    stacked = np.stack([probs[name] for name in names])

    def right(summed: np.ndarray) -> float:  # a sum of probabilities ranks classes as their mean does
        return 100 * float((summed.argmax(1) == labels).mean())

    by_order = np.array([[right(summed) for summed in stacked[rng.permutation(len(names))].cumsum(0)]
                         for _ in range(orders)])
    chosen, total, rows = [], np.zeros_like(stacked[0]), []
    for k in range(1, len(names) + 1):
        best = max((i for i in range(len(names)) if i not in chosen), key=lambda i: right(total + stacked[i]))
        chosen.append(best)
        total += stacked[best]
        after_k = by_order[:, k - 1]
        rows.append({"k": k, "random_mean": float(after_k.mean()), "random_min": float(after_k.min()),
                     "random_max": float(after_k.max()), "greedy": right(total), "greedy_added": names[best]})
    return rows


def agreement(probs: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """How many test images k members get right (k = 0..n, `right_by_count`), how many of those the equal-weight
    ensemble gets right (`ensemble_right_by_count`), and `shared_errors[a][b]`: the share of a's errors b makes too."""
    names = list(probs)
    right = np.stack([probs[name].argmax(1) == labels for name in names])
    count = right.sum(0)
    ensemble = np.mean([probs[name] for name in names], axis=0).argmax(1) == labels
    return {"right_by_count": np.bincount(count, minlength=len(names) + 1).tolist(),
            "ensemble_right_by_count": np.bincount(count[ensemble], minlength=len(names) + 1).tolist(),
            "shared_errors": {a: {b: float((~right[i] & ~right[j]).sum() / max(int((~right[i]).sum()), 1))
                                  for j, b in enumerate(names)} for i, a in enumerate(names)}}


def plot_growth(rows: list[dict], path: Path, target: float | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [row["k"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.fill_between(k, [r["random_min"] for r in rows], [r["random_max"] for r in rows], alpha=0.2,
                    label="random orders: range")
    ax.plot(k, [r["random_mean"] for r in rows], marker="o", label="random orders: mean")
    ax.plot(k, [r["greedy"] for r in rows], marker="s", label="greedy on test (optimistic)")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", label=f"target {target:g}%")
    ax.set(xlabel="members (equal weights)", ylabel="test top-1 (%)", title="Ensemble top-1 against its size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", type=Path,
                        help="predictions.npz files, run folders holding one, or exported model folders")
    parser.add_argument("--baseline", nargs="+", help="the members of the subset to compare against, by name (a "
                        "folder's name; a run's for its predictions.npz or best/) (default: all but the last member)")
    parser.add_argument("--min-size", type=int, default=2, help="the smallest subset listed (default: 2)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"),
                        help="the dataset whose test split model folders are run on (default: the shared CIFAR-10)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--growth", type=Path, metavar="PNG", help="also add the members one at a time (random "
                        "orders, and greedily on test), print the top-1 per size and plot it to this file")
    parser.add_argument("--target", type=float, help="a top-1 (%%) to draw across the --growth plot")
    parser.add_argument("--agreement", action="store_true", help="also print how many test images k members get "
                        "right and the share of each member's errors each other member makes too")
    args = parser.parse_args(argv)

    names = [member_name(path) for path in args.members]
    if len(set(names)) < len(names):
        raise SystemExit("two members have the same name: give each its own folder")
    baseline = args.baseline or names[:-1]
    unknown = sorted(set(baseline) - set(names))
    if unknown:
        raise SystemExit(f"--baseline names no member: {', '.join(unknown)} (members: {', '.join(names)})")
    probs, labels = test_probabilities(args.members, args.data_dir)
    for name, p in probs.items():
        print(f"{name}: {100 * float((p.argmax(1) == labels).mean()):.2f}% test top-1 (flip TTA)")
    rows = subset_table(probs, labels, baseline, args.min_size)
    if rows:
        print(f"\nagainst {' + '.join(baseline)} (equal weights), {len(labels):,} test images:")
        width = max(len(" + ".join(row["members"])) for row in rows)
        print(f"{'members':{width}s} {'top-1':>6s} {'fixed':>6s} {'broken':>6s} {'z':>6s} {'p':>8s}")
        for row in sorted(rows, key=lambda row: -row["top1"]):
            print(f"{' + '.join(row['members']):{width}s} {row['top1']:6.2f} {row['fixed']:6d} {row['broken']:6d} "
                  f"{row['z']:6.2f} {row['p']:8.2g}")
    curve = growth(probs, labels) if args.growth else []
    if curve:
        print(f"\n{'k':>3s} {'random: mean':>12s} {'min':>6s} {'max':>6s} {'greedy':>7s}  added")
        for row in curve:
            print(f"{row['k']:3d} {row['random_mean']:12.2f} {row['random_min']:6.2f} {row['random_max']:6.2f} "
                  f"{row['greedy']:7.2f}  {row['greedy_added']}")
        plot_growth(curve, args.growth, args.target)
        print(f"plot: {args.growth}")
    shared = agreement(probs, labels) if args.agreement else {}
    if shared:
        print(f"\n{'members right':>13s} {'images':>7s} {'ensemble right':>15s}")
        for k, (images, ensemble) in enumerate(zip(shared["right_by_count"], shared["ensemble_right_by_count"])):
            print(f"{k:13d} {images:7d} {ensemble:15d}")
        width = max(map(len, names)) + 4  # "12. name"
        print(f"\nshare of the row member's errors the column member makes too:\n{'':{width}s} "
              + " ".join(f"{i:>5d}" for i in range(1, len(names) + 1)))
        for i, (name, row) in enumerate(shared["shared_errors"].items(), 1):
            print(f"{f'{i}. {name}':{width}s} " + " ".join(f"{share:5.2f}" for share in row.values()))
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "test_images": len(labels), "rows": rows,
                                         "growth": curve, "agreement": shared}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
