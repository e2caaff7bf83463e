"""Bootstrap intervals of the threshold optimizer on 1,000,000 rows: 1,000 replicates, against the obvious way
(resample the rows, run `optimize` again), and the exact optimum alone (which the bootstrap must not slow down).

    python benchmarks/threshold_bootstrap.py --rows 1000000 --replicates 1000

Scores as in thresholds_10m.py: positives Beta(5, 2), negatives Beta(2, 5), 20% prevalence, 6 decimals (about
630,000 distinct scores in a million rows).  The Numba kernel is compiled (or loaded from its cache) before timing;
NUMBA_NUM_THREADS sets its threads (default: all cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--naive-replicates", type=int, default=20, help="replicates timed the obvious way")
    args = parser.parse_args()

    import numba

    from vision_ensemble.evaluation.threshold_bootstrap import bootstrap
    from vision_ensemble.evaluation.thresholds import ScoredLabels, optimize

    rng = np.random.default_rng(0)
    y = rng.random(args.rows) < 0.2
    scores = np.round(np.where(y, rng.beta(5, 2, args.rows), rng.beta(2, 5, args.rows)), 6)
    data = ScoredLabels(y, scores, "label", "score", "1", "0")
    print(f"{args.rows:,} rows, {len(np.unique(scores)):,} distinct scores, {numba.get_num_threads()} Numba threads")

    times = []
    for _ in range(5):
        start = time.perf_counter()
        result = optimize(data, "f1")
        times.append(time.perf_counter() - start)
    print(f"exact optimum (optimize, F1): median {np.median(times):.3f} s of 5 runs; threshold {result.threshold:.6f}")

    start = time.perf_counter()
    bootstrap(result, 2)
    print(f"kernel compile or cache load + 2 replicates: {time.perf_counter() - start:.1f} s")

    wall, cpu = time.perf_counter(), time.process_time()
    intervals = bootstrap(result, args.replicates)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    low, high = intervals.intervals["threshold"]
    print(f"bootstrap, {args.replicates:,} replicates: {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"({cpu / args.replicates / args.rows * 1e9:.1f} ns CPU per row and replicate); "
          f"95% interval of the threshold {low:.6f} to {high:.6f}")

    start = time.perf_counter()
    for replicate in range(args.naive_replicates):
        drawn = np.random.default_rng(replicate).integers(0, args.rows, args.rows)
        optimize(ScoredLabels(y[drawn], scores[drawn], "label", "score", "1", "0"), "f1")
    per_replicate = (time.perf_counter() - start) / args.naive_replicates
    print(f"obvious way (resample rows, optimize): {per_replicate:.3f} s per replicate, "
          f"{per_replicate * args.replicates:.0f} s for {args.replicates:,} "
          f"(extrapolated from {args.naive_replicates})")


if __name__ == "__main__":
    main()
