"""Threshold optimizer on a 10,000,000-row CSV: parse + optimise time and peak memory, against the usual
approaches on the same arrays.

    python benchmarks/thresholds_10m.py --rows 10000000

Each contender runs in its own process so its peak RSS (ru_maxrss) is its own.  The CSV is written once
(to --csv, default /tmp) with realistic scores: a classifier whose positive scores follow Beta(5, 2) and
negative scores Beta(2, 5), 20% prevalence, 6 decimals.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(rows) < 0.2
    scores = np.where(y, rng.beta(5, 2, rows), rng.beta(2, 5, rows))
    with open(path, "w") as f:
        f.write("label,score\n")
        for start in range(0, rows, 1_000_000):
            block = np.char.add(np.char.add(y[start:start + 1_000_000].astype(int).astype(str), ","),
                                np.char.mod("%.6f", scores[start:start + 1_000_000]))
            f.write("\n".join(block.tolist()) + "\n")


def contender(name: str, csv_path: str) -> dict:
    """Run one approach; returns its timings (seconds) and F1 optimum."""
    from vision_ensemble.evaluation.thresholds import optimize, read_scores_csv

    t0 = time.perf_counter()
    data = read_scores_csv(csv_path)
    t_parse = time.perf_counter() - t0
    y, scores = data.y, data.scores
    t1 = time.perf_counter()
    if name == "ours":
        result = optimize(data, "f1")
        best = (result.threshold, result.value)
    elif name == "sklearn_grid81":
        from sklearn.metrics import f1_score
        grid = np.linspace(0.1, 0.9, 81)
        values = [f1_score(y, scores >= t) for t in grid]
        best = (float(grid[int(np.argmax(values))]), float(max(values)))
    elif name == "sklearn_precision_recall_curve":
        from sklearn.metrics import precision_recall_curve
        p, r, t = precision_recall_curve(y, scores)
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)[:-1]
        best = (float(t[int(np.argmax(f1))]), float(f1.max()))
    elif name == "sklearn_confusion_matrix_at_thresholds":
        from sklearn.metrics import confusion_matrix_at_thresholds
        tns, fps, fns, tps, t = confusion_matrix_at_thresholds(y, scores)
        f1 = 2 * tps / np.maximum(2 * tps + fps + fns, 1)
        best = (float(t[int(np.argmax(f1))]), float(f1.max()))
    t_opt = time.perf_counter() - t1
    return {"parse_s": t_parse, "optimize_s": t_opt, "total_s": t_parse + t_opt, "threshold": best[0],
            "f1": best[1], "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--csv", type=Path, default=Path("/tmp/thresholds_bench.csv"))
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(contender(args.only, str(args.csv))))
        return
    if not args.csv.exists() or sum(1 for _ in open(args.csv, "rb")) - 1 != args.rows:
        t = time.perf_counter()
        make_csv(args.csv, args.rows)
        print(f"wrote {args.csv} ({args.csv.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
    print(f"{'approach':<42}{'parse s':>9}{'optimise s':>12}{'total s':>9}{'peak RSS GB':>13}  F1 optimum (threshold)")
    for name in ("ours", "sklearn_confusion_matrix_at_thresholds", "sklearn_precision_recall_curve", "sklearn_grid81"):
        out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--csv", str(args.csv), "--only", name],
                             capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout)
        print(f"{name:<42}{r['parse_s']:>9.2f}{r['optimize_s']:>12.2f}{r['total_s']:>9.2f}{r['peak_rss_gb']:>13.2f}"
              f"  {r['f1']:.6f} ({r['threshold']:.6f})")


if __name__ == "__main__":
    main()
