"""Evaluate ensemble members and their soft-voting ensemble on the test split.

    python evaluation/evaluate.py --models runs/seresnet50/best runs/efficientnet_b0/best \\
        --data-dir ../shared/data/cifar10.tar.gz --output-dir results/ --tta

Members are timm model folders or Hub repo ids.  Weights (unless --equal-weights) and the temperature are
fitted on the validation split, then everything is measured on the test split.  Writes report.json,
ensemble.json (the manifest the app loads), confusion_matrix.png and reliability_diagram.png; with
--update-card, fills the results section of model_card.md from the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix

from vision_ensemble.config import CIFAR10_NAME, DEFAULT_SEED, DEFAULT_VAL_SIZE
from vision_ensemble.data import DataError, load_dataset, subset_indices
from vision_ensemble.ensemble import (Ensemble, Member, calibration_bins, expected_calibration_error, fit_temperature,
                                      fit_weights, nll, topk_accuracy)
from vision_ensemble.hub import MODEL_CARD, fill_results, results_markdown
from vision_ensemble.model import ModelError
from vision_ensemble.plots import confusion_matrix_figure, reliability_figure, save
from vision_ensemble.tracking import TrackingError, log_evaluation, require_trackers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="member model folders or Hub repo ids")
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
    p.add_argument("--report-to", choices=("none", "mlflow"), default="none",
                   help="also log the report as an MLflow run ($MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python evaluation/evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        require_trackers(args.report_to)  # before decoding data or loading members
        data = load_dataset(args.data_dir, args.cache_dir, args.val_size if args.val_size < 1 else int(args.val_size),
                            args.seed)
        if data.test is None:
            raise DataError(f"{args.data_dir} has no test/ split to evaluate on")
        members = [Member.load(source, device=args.device) for source in args.models]
        ensemble = Ensemble(members, tta_flip=args.tta)
        if ensemble.class_names != data.class_names:
            raise ModelError(f"the members' classes {ensemble.class_names} differ from the dataset's {data.class_names}")
    except (DataError, ModelError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def as_batch(arrays):
        keep = subset_indices(len(arrays), args.max_eval_samples, args.seed)
        arrays = arrays if keep is None else arrays.subset(keep)
        return torch.from_numpy(arrays.images).permute(0, 3, 1, 2), arrays.labels

    val_images, val_labels = as_batch(data.val)
    test_images, test_labels = as_batch(data.test)
    start = time.perf_counter()
    val_member = ensemble.member_probabilities(val_images, args.batch_size)
    test_member = ensemble.member_probabilities(test_images, args.batch_size)
    inference_s = time.perf_counter() - start

    if not args.equal_weights:
        ensemble.weights = fit_weights(val_member, val_labels)
    ensemble.temperature = fit_temperature(ensemble.combine(val_member, calibrated=False), val_labels)
    raw = ensemble.combine(test_member, calibrated=False)
    calibrated = ensemble.combine(test_member)
    predicted = calibrated.argmax(axis=1)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": command, "date": time.strftime("%Y-%m-%d"), "device": str(torch.cuda.get_device_name()
                                                                              if args.device == "cuda" else "cpu"),
        "data_dir": str(args.data_dir), "val_images": len(val_labels), "test_images": len(test_labels),
        "tta_flip": args.tta, "class_names": ensemble.class_names, "inference_s": inference_s,
        "members": [{"source": m.source, "weight": float(w), "top1": topk_accuracy(p, test_labels, 1),
                     "top3": topk_accuracy(p, test_labels, 3), "nll": nll(p, test_labels),
                     "ece": expected_calibration_error(p, test_labels), "input_size": m.data_config["input_size"]}
                    for m, w, p in zip(ensemble.members, ensemble.weights, test_member)],
        "ensemble": {"top1": topk_accuracy(calibrated, test_labels, 1), "top3": topk_accuracy(calibrated, test_labels, 3),
                     "temperature": ensemble.temperature,
                     "nll_uncalibrated": nll(raw, test_labels), "nll_calibrated": nll(calibrated, test_labels),
                     "ece_uncalibrated": expected_calibration_error(raw, test_labels),
                     "ece_calibrated": expected_calibration_error(calibrated, test_labels),
                     "equal_weight_top1": topk_accuracy(test_member.mean(axis=0), test_labels, 1)},
        "per_class": classification_report(test_labels, predicted, labels=range(len(ensemble.class_names)),
                                           target_names=ensemble.class_names, output_dict=True, zero_division=0),
        "confusion_matrix": confusion_matrix(test_labels, predicted, labels=range(len(ensemble.class_names))).tolist(),
    }
    (args.output_dir / "report.json").write_text(json.dumps(report, indent=2))
    manifest = ensemble.manifest()
    for entry in manifest["members"]:  # local folders relative to the manifest, so the pair can move together
        if Path(entry["source"]).is_dir():
            entry["source"] = os.path.relpath(Path(entry["source"]).resolve(), args.output_dir.resolve())
    (args.output_dir / "ensemble.json").write_text(json.dumps(manifest, indent=2))
    save(confusion_matrix_figure(np.asarray(report["confusion_matrix"]), ensemble.class_names,
                                 f"Ensemble, test split (top-1 {report['ensemble']['top1']:.2f}%)"),
         args.output_dir / "confusion_matrix.png")
    save(reliability_figure({f"before (ECE {report['ensemble']['ece_uncalibrated'] * 100:.2f}%)": calibration_bins(raw, test_labels),
                             f"after T={ensemble.temperature:.2f} (ECE {report['ensemble']['ece_calibrated'] * 100:.2f}%)":
                                 calibration_bins(calibrated, test_labels)}),
         args.output_dir / "reliability_diagram.png")
    if args.update_card:
        MODEL_CARD.write_text(fill_results(MODEL_CARD.read_text(), results_markdown(report)))
    if args.report_to == "mlflow":
        print(f"logged to MLflow run {log_evaluation(report, args.output_dir)}")

    for m in report["members"]:
        print(f"{m['source']}: top-1 {m['top1']:.2f}%  top-3 {m['top3']:.2f}%  weight {m['weight']:.3f}")
    e = report["ensemble"]
    print(f"ensemble: top-1 {e['top1']:.2f}%  top-3 {e['top3']:.2f}%  ECE {e['ece_uncalibrated'] * 100:.2f}% -> "
          f"{e['ece_calibrated'] * 100:.2f}% (T = {e['temperature']:.3f})")
    print(f"wrote report.json, ensemble.json, confusion_matrix.png, reliability_diagram.png to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
