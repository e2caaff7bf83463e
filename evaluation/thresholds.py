"""Find the best decision threshold for a binary classifier's scores.

    python evaluation/thresholds.py scores.csv --objective f1
    python evaluation/thresholds.py scores.csv --objective recall_at_precision --min-precision 0.95 --json
    python evaluation/thresholds.py scores.csv --objective cost --cost-fp 1 --cost-fn 10 --out-dir results/
    python evaluation/thresholds.py scores.csv --bootstrap 1000        # how sure is the threshold? 95% intervals

The CSV needs a label column and a score column; common names (label, y_true, target, ...; score, prob,
confidence, ...) are recognised, or name them.  Every distinct score is tried (predict positive where
score >= threshold): the answer is exact, not a grid.  --bootstrap N repeats the same exact search on N
resamples of the rows and gives percentile intervals for the threshold and every metric at it (seeded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vision_ensemble.config import (DEFAULT_BOOTSTRAP_CONFIDENCE, DEFAULT_BOOTSTRAP_REPLICATES, DEFAULT_BOOTSTRAP_SEED,
                                     MAX_CSV_ROWS)
from vision_ensemble.evaluation.thresholds import (OBJECTIVES, ObjectiveParams, ThresholdError, comparison_rows,
                                                   curve_figures, optimize, read_scores_csv, results_table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="CSV file with a label column and a score column (delimiter sniffed)")
    p.add_argument("--objective", default="f1", choices=list(OBJECTIVES),
                   help="what to optimise: " + "; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items()))
    p.add_argument("--beta", type=float, default=1.0, help="beta of --objective fbeta (default 1)")
    p.add_argument("--cost-fp", type=float, default=1.0, help="cost of a false positive (--objective cost)")
    p.add_argument("--cost-fn", type=float, default=1.0, help="cost of a false negative (--objective cost)")
    p.add_argument("--min-precision", type=float, default=0.9, help="precision floor of recall_at_precision")
    p.add_argument("--min-recall", type=float, default=0.9, help="recall floor of precision_at_recall")
    p.add_argument("--label-col", help="label column name (default: detected)")
    p.add_argument("--score-col", help="score column name (default: detected)")
    p.add_argument("--positive", help="the positive class label, when labels are not 0/1, true/false or yes/no")
    p.add_argument("--max-rows", type=int, default=MAX_CSV_ROWS, help="refuse files with more rows than this")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", nargs="?", const=DEFAULT_BOOTSTRAP_REPLICATES,
                   help=f"confidence intervals from N bootstrap resamples of the rows (--bootstrap alone: "
                        f"{DEFAULT_BOOTSTRAP_REPLICATES}); each resample reruns the exact search")
    p.add_argument("--confidence", type=float, default=DEFAULT_BOOTSTRAP_CONFIDENCE,
                   help="confidence level of the --bootstrap intervals (default 0.95)")
    p.add_argument("--seed", type=int, default=DEFAULT_BOOTSTRAP_SEED,
                   help="--bootstrap's seed: the same seed gives the same intervals")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out-dir", type=Path,
                   help="also write results.csv (metrics per threshold), summary.json and pr/roc/metrics PNGs here")
    return p


def print_table(result, intervals=None) -> None:
    summary = result.summary()
    print(f"{summary['rows']:,} rows ({summary['positives']:,} positive = '{summary['positive_label']}'), "
          f"{summary['distinct_thresholds']:,} distinct scores; ROC AUC {summary['roc_auc']:.4f}, "
          f"AP {summary['average_precision']:.4f}")
    print(f"best threshold for {summary['objective_description']}: {summary['threshold']:.6g} "
          f"(value {summary['value']:.4f})\n")
    ranges = intervals.intervals if intervals else {}
    header = f"{intervals.confidence:.0%} interval" if intervals else ""
    print(f"{'metric':<20}{'at 0.5':>12}{'at optimum':>14}  {header}")
    for name, at_half, at_optimum in [("threshold", 0.5, result.threshold), *comparison_rows(result)]:
        fmt = ",d" if isinstance(at_half, int) else ".4f"
        band = f"  {ranges[name][0]:.4f} to {ranges[name][1]:.4f}" if name in ranges else ""
        print(f"{name:<20}{at_half:>12{fmt}}{at_optimum:>14{fmt}}{band}")
    if intervals:
        from vision_ensemble.evaluation.threshold_bootstrap import interval_line
        print(f"\n{interval_line(result, intervals)}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    params = ObjectiveParams(beta=args.beta, cost_fp=args.cost_fp, cost_fn=args.cost_fn,
                             min_precision=args.min_precision, min_recall=args.min_recall)
    try:
        data = read_scores_csv(args.csv, args.label_col, args.score_col, args.positive, args.max_rows)
        result = optimize(data, args.objective, params)
        intervals = None
        if args.bootstrap:
            from tqdm import tqdm

            from vision_ensemble.evaluation.threshold_bootstrap import bootstrap  # Numba: only when asked for
            with tqdm(total=args.bootstrap, desc="bootstrap", unit="resample", disable=None) as bar:
                intervals = bootstrap(result, args.bootstrap, args.confidence, args.seed, params,
                                      progress=lambda done, _: bar.update(done - bar.n))
    except ThresholdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    if intervals:
        summary["bootstrap"] = intervals.summary()
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        results_table(result).to_csv(args.out_dir / "results.csv", index=False)
        (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        for name, fig in curve_figures(result, intervals.band if intervals else None).items():
            fig.savefig(args.out_dir / f"{name}.png", dpi=110)
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(result, intervals)
        if args.out_dir:
            print(f"\nwrote results.csv, summary.json, pr.png, roc.png, metrics.png to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
