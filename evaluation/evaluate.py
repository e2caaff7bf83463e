"""Evaluate ensemble members and their soft-voting ensemble on the test split.

    python evaluation/evaluate.py --models runs/seresnet50/best runs/efficientnet_b0/best \\
        --data-dir ../shared/data/cifar10.tar.gz --output-dir results/ --tta
    python evaluation/evaluate.py --predictions runs/*/predictions.npz --output-dir results/ --tta

Members are timm model folders or Hub repo ids, or the predictions.npz files training runs leave behind
(their best epoch's probabilities: no weights or dataset needed; members named as their Hub repos).
Weights (unless --equal-weights) and the temperature are fitted on the validation split, then everything
is measured on the test split.  Writes report.json, ensemble.json (the manifest the app loads),
confusion_matrix.png and reliability_diagram.png; with --update-card, fills the results section of
model_card.md from the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

from vision_ensemble.config import CIFAR10_NAME, DEFAULT_SEED, DEFAULT_VAL_SIZE
from vision_ensemble.data import DataError, load_dataset
from vision_ensemble.ensemble import Ensemble, Member
from vision_ensemble.hub import MODEL_CARD, fill_results, results_markdown
from vision_ensemble.model import ModelError
from vision_ensemble.predictions import PredictionsError, check_same_data, evaluation_batch, load_predictions
from vision_ensemble.report import MemberPredictions, evaluate_ensemble, summary_lines, write_outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    members = p.add_mutually_exclusive_group(required=True)
    members.add_argument("--models", nargs="+", help="member model folders or Hub repo ids")
    members.add_argument("--predictions", nargs="+", type=Path,
                         help="members' predictions.npz files from training runs (instead of --models; the "
                              "data options below do not apply: the files hold their own split)")
    p.add_argument("--data-dir", default=CIFAR10_NAME, help="dataset, as for training (default: cifar10)")
    p.add_argument("--cache-dir", help="decoded-dataset cache, as for training")
    p.add_argument("--val-size", type=float, default=DEFAULT_VAL_SIZE, help="must match training's split")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed; must match training's")
    p.add_argument("--output-dir", type=Path, default=Path("results"), help="where report.json etc. go")
    p.add_argument("--tta", action="store_true", help="average predictions over the image and its mirror")
    p.add_argument("--equal-weights", action="store_true", help="do not fit soft-voting weights on val")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--max-eval-samples", type=int, help="evaluate on only this many val and test images")
    p.add_argument("--update-card", action="store_true", help="write the results into model_card.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python evaluation/evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.predictions:
        return evaluate_predictions(args, command)
    try:
        data = load_dataset(args.data_dir, args.cache_dir, args.val_size if args.val_size < 1 else int(args.val_size),
                            args.seed)
        if data.test is None:
            raise DataError(f"{args.data_dir} has no test/ split to evaluate on")
        members = [Member.load(source, device=args.device) for source in args.models]
        class_names = Ensemble(members).class_names  # checks that the members agree
        if class_names != data.class_names:
            raise ModelError(f"the members' classes {class_names} differ from the dataset's {data.class_names}")
    except (DataError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    val_images, val_labels = evaluation_batch(data.val, args.max_eval_samples, args.seed)
    test_images, test_labels = evaluation_batch(data.test, args.max_eval_samples, args.seed)
    start = time.perf_counter()
    predictions = [MemberPredictions(m.source, m.data_config, m.probabilities(val_images, args.tta, args.batch_size).numpy(),
                                     m.probabilities(test_images, args.tta, args.batch_size).numpy())
                   for m in members]
    inference_s = time.perf_counter() - start
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    evaluation = evaluate_ensemble(predictions, val_labels, test_labels, data.class_names, args.tta, args.equal_weights,
                                   context={"command": command, "device": device, "data_dir": str(args.data_dir),
                                            "inference_s": inference_s})
    return finish(args, evaluation, predictions, test_labels)


def evaluate_predictions(args, command: str) -> int:
    """The same report from training runs' predictions.npz files: no weights, no dataset."""
    try:
        runs = [load_predictions(path) for path in args.predictions]
        check_same_data(runs, args.predictions)
    except PredictionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first = runs[0]
    predictions = [run.member(args.tta) for run in runs]
    evaluation = evaluate_ensemble(predictions, first.val_labels, first.test_labels, first.class_names, args.tta,
                                   args.equal_weights,
                                   context={"command": command, "device": ", ".join(sorted({r.device for r in runs})),
                                            "data_dir": first.data_dir,
                                            "predictions_files": [str(path) for path in args.predictions]})
    return finish(args, evaluation, predictions, first.test_labels)


def finish(args, evaluation, predictions, test_labels) -> int:
    write_outputs(evaluation, predictions, test_labels, args.output_dir)
    if args.update_card:
        MODEL_CARD.write_text(fill_results(MODEL_CARD.read_text(), results_markdown(evaluation.report)))
    print("\n".join(summary_lines(evaluation.report)))
    print(f"wrote report.json, ensemble.json, confusion_matrix.png, reliability_diagram.png to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
