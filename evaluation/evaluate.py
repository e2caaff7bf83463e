"""Evaluate ensemble members and their soft-voting ensemble on the test split.

    python evaluation/evaluate.py --models runs/seresnet50/best runs/efficientnet_b0/best \\
        --data-dir ../shared/data/cifar10.tar.gz --output-dir results/ --tta
    python evaluation/evaluate.py --predictions runs/*/predictions.npz --output-dir results/ --tta

Members are timm model folders or Hub repo ids, or the predictions.npz files training runs leave behind
(their best epoch's probabilities: no weights or dataset needed; members named as their Hub repos).
Weights (unless --equal-weights) and the temperature are fitted on the validation split, then everything
is measured on the test split.  Writes report.json, ensemble.json (the manifest the app loads, with the
uncertainty rule and the conformal prediction-set rule chosen on validation), confusion_matrix.png,
reliability_diagram.png and conformal_coverage.png; with models,
--diagnose adds error_gallery.png, the top confusions and accuracy under FGSM/PGD attacks
(robustness.png); with --update-card, fills the results section and the Hub metadata (model-index) of
model_card.md from the report, and lists the members published on the Hub as the Space's `models:` in README.md.
With --student (a distilled student's folder, or its predictions.npz beside --predictions), the report puts the
student beside the ensemble (top-1, ECE before and after its temperature, agreement with the ensemble, batch-1
latency of both on 2 CPU threads) and <output-dir>/student/ is the folder the Space serves by default: the
student's one-member ensemble.json, the report and (from a folder) its weights.

    python evaluation/evaluate.py --models runs/*/best --student runs/student/best --output-dir results/

    python evaluation/evaluate.py --models ... --ood-images examples/china.jpg examples/flower.jpg \\
        --diagnose --attack-samples 256 --update-card
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
from accelerate import Accelerator

from vision_ensemble.config import (CIFAR10_NAME, CONFORMAL_SCORES, DEFAULT_ATTACK_SAMPLES, DEFAULT_CONFORMAL_SCORE,
                                    DEFAULT_COVERAGE, DEFAULT_SEED, DEFAULT_VAL_SIZE, EVAL_BATCH_PIXELS, PGD_STEPS,
                                    UNCERTAINTY_FLAGGED_ACCURACY, models_cache_size)
from vision_ensemble.data import DataError, common_split_seed, load_dataset
from vision_ensemble.evaluation.conformal import calibration_problem
from vision_ensemble.evaluation.diagnostics import diagnose
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.evaluation.label_issues import report_label_issues, split_files
from vision_ensemble.evaluation.predictions import (PredictionsError, check_same_data, evaluation_split,
                                                    load_predictions)
from vision_ensemble.evaluation.report import (MemberPredictions, evaluate_ensemble, out_of_domain_flags,
                                               summary_lines, write_outputs)
from vision_ensemble.evaluation.sharding import sharded_probabilities
from vision_ensemble.evaluation.student import batch1_latency_ms, compare_student, write_student_folder
from vision_ensemble.hub import MODEL_CARD, SPACE_README, ensemble_card, space_models
from vision_ensemble.images import ImageError, load_rgb
from vision_ensemble.model import Member, ModelError
from vision_ensemble.training.tracking import TrackingError, log_evaluation, require_trackers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    members = p.add_mutually_exclusive_group(required=True)
    members.add_argument("--models", nargs="+", help="member model folders or Hub repo ids")
    members.add_argument("--predictions", nargs="+", type=Path,
                         help="members' predictions.npz files from training runs (instead of --models; the "
                              "data options and --diagnose/--ood-images do not apply: the files hold their own split)")
    p.add_argument("--student", help="a student distilled from these members (train/finetune.py --teacher): its "
                   "model folder or Hub repo id with --models, its predictions.npz with --predictions")
    p.add_argument("--data-dir", default=CIFAR10_NAME, help="dataset, as for training (default: cifar10)")
    p.add_argument("--cache-dir", help="decoded-dataset cache, as for training")
    p.add_argument("--cache-size", type=int, help="decoded-cache image size, as for training (default: from the "
                   "members' input size and crop_pct, e.g. 224 -> 256)")
    p.add_argument("--val-size", type=float, default=DEFAULT_VAL_SIZE, help="must match training's split")
    p.add_argument("--split-seed", type=int, help="the train/val split's seed (default: the members', from their "
                   "training_args.json; members trained on different splits are refused)")
    p.add_argument("--output-dir", type=Path, default=Path("results"), help="where report.json etc. go")
    p.add_argument("--tta", action="store_true", help="average predictions over the image and its mirror")
    p.add_argument("--equal-weights", action="store_true", help="do not fit soft-voting weights on val")
    p.add_argument("--batch-size", type=int, help="images per inference batch (default: EVAL_BATCH_PIXELS worth of the "
                   "largest member input: 500 at 64 px, 40 at 224 px)")
    p.add_argument("--max-eval-samples", type=int, help="evaluate on only this many val and test images")
    p.add_argument("--flagged-accuracy", type=float, default=UNCERTAINTY_FLAGGED_ACCURACY,
                   help="the uncertainty hint fires below the calibrated probability at which validation predictions "
                        "are right at most this often (or when fewer than half the members agree)")
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE,
                   help="conformal prediction sets: the share of images whose set of classes should hold the true "
                        "class (default 0.9), calibrated on the validation split")
    p.add_argument("--conformal", choices=CONFORMAL_SCORES, default=DEFAULT_CONFORMAL_SCORE,
                   help="how the sets are built: aps (default: never empty, larger on harder images), lac (smallest "
                        "sets on average, may be empty), raps (aps with a penalty on long sets, for many classes)")
    p.add_argument("--ood-images", nargs="+", default=[], metavar="IMAGE",
                   help="out-of-domain photos to report the uncertainty hint on, e.g. examples/china.jpg "
                        "examples/flower.jpg")
    p.add_argument("--diagnose", action="store_true",
                   help="also write error_gallery.png (most confident errors with Grad-CAM), the top confusions, "
                        "and accuracy under FGSM/PGD attacks (robustness.png)")
    p.add_argument("--attack-samples", type=int, default=DEFAULT_ATTACK_SAMPLES,
                   help="test images attacked by --diagnose (a seeded subset)")
    p.add_argument("--pgd-steps", type=int, default=PGD_STEPS, help="PGD iterations per radius for --diagnose")
    p.add_argument("--label-issues", action="store_true",
                   help="rank the val and test images by how likely their label is wrong (cleanlab's confident "
                        "learning on the ensemble's probabilities): label_issues.csv and label_issues.png; review them "
                        "with python -m vision_ensemble.labeler FOLDER --review label_issues.csv")
    p.add_argument("--update-card", action="store_true", help="write the results and their Hub metadata into "
                   "model_card.md, and the members' Hub repos into README.md's models:")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--report-to", choices=("none", "mlflow"), default="none",
                   help="also log the report as an MLflow run ($MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.coverage < 1:
        parser.error(f"--coverage {args.coverage}: give a share between 0 and 1, e.g. 0.9")
    command = "python evaluation/evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.predictions:
        return evaluate_predictions(args, command)
    # Under `accelerate launch` (or torchrun) the processes share member inference; the main one reports.
    accelerator = Accelerator(cpu=args.device == "cpu")
    inference_device = accelerator.device if accelerator.num_processes > 1 else args.device
    try:
        require_trackers(args.report_to)  # before decoding data or loading members
        members = [Member.load(source, device=inference_device) for source in args.models]
        student = Member.load(args.student, device=inference_device) if args.student else None
        models = members + ([student] if student else [])
        class_names = Ensemble(models).class_names  # checks that the models agree
        split_seed = common_split_seed({m.source: m.training_args for m in models}, args.split_seed)
        split_seed = DEFAULT_SEED if split_seed is None else split_seed
        cache_size = args.cache_size or models_cache_size(m.data_config for m in models)
        data = load_dataset(args.data_dir, args.cache_dir, args.val_size if args.val_size < 1 else int(args.val_size),
                            split_seed, cache_size)
        if data.test is None:
            raise DataError(f"{args.data_dir} has no test/ split to evaluate on")
        if class_names != data.class_names:
            raise ModelError(f"the members' classes {class_names} differ from the dataset's {data.class_names}")
        ood_images = {Path(path).name: load_rgb(path) for path in args.ood_images}
    except (DataError, ModelError, ImageError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        accelerator.end_training()
        return 2

    largest = max(m.data_config["input_size"][1] * m.data_config["input_size"][2] for m in models)
    batch_size = args.batch_size or max(1, EVAL_BATCH_PIXELS // largest)
    val, test = (evaluation_split(split, args.max_eval_samples, split_seed) for split in (data.val, data.test))
    val_labels, test_labels = val.labels, test.labels
    if problem := calibration_problem(len(val_labels), args.coverage, args.conformal):
        print(f"note: no conformal prediction sets: {problem}", file=sys.stderr)

    def predictions_of(member) -> MemberPredictions:
        return MemberPredictions(member.source, member.data_config, *(
            sharded_probabilities(member, split, args.tta, batch_size, accelerator) for split in (val, test)))

    start = time.perf_counter()  # batches read from the memory-mapped cache: memory stays flat whatever the split size
    predictions = [predictions_of(m) for m in members]
    inference_s = time.perf_counter() - start
    # The student's inference is sharded too, so every process takes part in its gathers before the others leave.
    student_prediction = None if student is None else predictions_of(student)
    # The processes leave the process group together, before any of them exits: one that exits holding it can
    # abort in the group's teardown (SIGABRT, "terminate called without an active exception") while the others
    # are still reporting.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not accelerator.is_main_process:
        return 0
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    evaluation = evaluate_ensemble(predictions, val_labels, test_labels, data.class_names, args.tta, args.equal_weights,
                                   context={"command": command, "device": device, "data_dir": str(args.data_dir),
                                            "inference_s": inference_s}, flagged_accuracy=args.flagged_accuracy,
                                   coverage=args.coverage, conformal_score=args.conformal)
    ensemble = Ensemble(members, evaluation.weights, evaluation.temperature, args.tta, evaluation.uncertainty,
                        evaluation.conformal)
    evaluation.report["uncertainty"]["out_of_domain"] = out_of_domain_flags(ensemble, ood_images)
    written = []
    if args.label_issues:  # first: report.json and the card count the flagged labels
        written += report_label_issues(evaluation.report, {
            "val": (np.stack([p.val_probs for p in predictions]), val_labels,
                    split_files(data.val, args.max_eval_samples, split_seed), as_batch(val)),
            "test": (np.stack([p.test_probs for p in predictions]), test_labels,
                     split_files(data.test, args.max_eval_samples, split_seed), as_batch(test))},
            evaluation.weights, evaluation.temperature, args.output_dir)
    written = write_outputs(evaluation, predictions, test_labels, args.output_dir) + written
    if args.diagnose:
        written += diagnose(evaluation.report, ensemble, as_batch(test), test_labels, evaluation.test_calibrated,
                            args.output_dir, args.attack_samples, args.pgd_steps, split_seed)
    if student is not None:  # last: the latency runs move the networks to the CPU
        latency = {"ensemble": batch1_latency_ms(ensemble, as_batch(test)),
                   "student": batch1_latency_ms(Ensemble([student], tta_flip=args.tta), as_batch(test))}
        written += add_student(args, evaluation, student_prediction, val_labels, test_labels, latency)
    return finish(args, evaluation, written)


def as_batch(arrays) -> torch.Tensor:
    """uint8 NCHW view of a split: the memory map itself, or its subset copied to RAM (the figures' few images)."""
    return torch.from_numpy(arrays.images).permute(0, 3, 1, 2)


def add_student(args, evaluation, student: MemberPredictions, val_labels, test_labels, latency=None) -> list[Path]:
    own = compare_student(evaluation, student, val_labels, test_labels, latency, args.flagged_accuracy)
    written = write_student_folder(evaluation, own, student, test_labels, args.output_dir / "student")
    (args.output_dir / "report.json").write_text(json.dumps(evaluation.report, indent=2))  # now with the student
    return written


def evaluate_predictions(args, command: str) -> int:
    """The same report from training runs' predictions.npz files: no weights, no dataset."""
    try:
        require_trackers(args.report_to)
        if args.diagnose or args.ood_images or args.label_issues:
            raise PredictionsError("--diagnose, --ood-images and --label-issues need the models and the data: pass "
                                   "--models instead of --predictions")
        paths = args.predictions + ([Path(args.student)] if args.student else [])
        runs = [load_predictions(path) for path in paths]
        check_same_data(runs, paths)  # the student too: predicted on the same images
        student, runs = (runs[-1], runs[:-1]) if args.student else (None, runs)
        if problem := calibration_problem(len(runs[0].val_labels), args.coverage, args.conformal):
            print(f"note: no conformal prediction sets: {problem}", file=sys.stderr)
    except (PredictionsError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first = runs[0]
    predictions = [run.member(args.tta) for run in runs]
    evaluation = evaluate_ensemble(predictions, first.val_labels, first.test_labels, first.class_names, args.tta,
                                   args.equal_weights,
                                   context={"command": command, "device": ", ".join(sorted({r.device for r in runs})),
                                            "data_dir": first.data_dir,
                                            "predictions_files": [str(path) for path in args.predictions]},
                                   flagged_accuracy=args.flagged_accuracy, coverage=args.coverage,
                                   conformal_score=args.conformal)
    written = write_outputs(evaluation, predictions, first.test_labels, args.output_dir)
    if student is not None:
        written += add_student(args, evaluation, student.member(args.tta), first.val_labels, first.test_labels)
    return finish(args, evaluation, written)


def finish(args, evaluation, written: list[Path]) -> int:
    """Model card, tracker and the summary: the same for both kinds of members."""
    if args.update_card:
        MODEL_CARD.write_text(ensemble_card(MODEL_CARD.read_text(), evaluation.report))
        space_models(SPACE_README, args.output_dir / "ensemble.json")  # the members on the Hub, linked to the Space
    if args.report_to == "mlflow":
        print(f"logged to MLflow run {log_evaluation(evaluation.report, args.output_dir)}")
    print("\n".join(summary_lines(evaluation.report)))
    print(f"wrote {', '.join(str(p.relative_to(args.output_dir)) for p in written)} to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
