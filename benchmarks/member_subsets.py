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
    print(f"\nagainst {' + '.join(baseline)} (equal weights), {len(labels):,} test images:")
    width = max(len(" + ".join(row["members"])) for row in rows)
    print(f"{'members':{width}s} {'top-1':>6s} {'fixed':>6s} {'broken':>6s} {'z':>6s} {'p':>8s}")
    for row in sorted(rows, key=lambda row: -row["top1"]):
        print(f"{' + '.join(row['members']):{width}s} {row['top1']:6.2f} {row['fixed']:6d} {row['broken']:6d} "
              f"{row['z']:6.2f} {row['p']:8.2g}")
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "test_images": len(labels), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
