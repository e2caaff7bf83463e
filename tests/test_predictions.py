"""Prediction files: a real training run leaves its best epoch's probabilities in predictions.npz, and
`evaluate.py --predictions` builds the same report from them as `evaluate.py --models` from the folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REPO, make_member, run_in_process
from vision_ensemble.config import recipe_config
from vision_ensemble.data import subset_indices
from vision_ensemble.evaluation.predictions import evaluation_batch, load_predictions, save_predictions
from vision_ensemble.model import Member

EVALUATE = str(REPO / "evaluation" / "evaluate.py")
EVAL_SAMPLES = 101  # tiny_run_args' --max-eval-samples: the run validates on this seeded subset


def evaluate(*args):
    return run_in_process(EVALUATE, *args, check=False)


@pytest.fixture(scope="module")
def second_member(cifar10, cifar10_archive, tmp_path_factory):
    """Another member (48 px input, over-confident) and its predictions file, written without a training run."""
    folder = make_member(tmp_path_factory.mktemp("b") / "best", seed=1, img_size=48, sharpen=20.0)
    (folder / "metrics.json").write_text(json.dumps({"epoch": 1, "val_top1": 0.0}))
    cfg = recipe_config({"model": "test_resnet", "data_dir": str(cifar10_archive), "max_eval_samples": EVAL_SAMPLES,
                         "max_train_samples": 256})  # its training-split probabilities: 256 images, not 45,000
    path = save_predictions(folder.parent / "predictions.npz", folder, cifar10, cfg, "someone/tiny-b")
    return folder, path


@pytest.mark.slow
def test_run_folder_holds_the_best_epochs_probabilities(trained_run, cifar10):
    path = trained_run / "predictions.npz"
    saved = load_predictions(path)
    assert path.stat().st_size < 1_000_000
    for name in ("val_probs", "val_probs_flip", "test_probs", "test_probs_flip"):
        probs = getattr(saved, name)
        assert probs.shape == (EVAL_SAMPLES, 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    # The same images training validated on, and evaluate.py's test subset.
    np.testing.assert_array_equal(saved.val_labels, evaluation_batch(cifar10.val, EVAL_SAMPLES, 0)[1])
    np.testing.assert_array_equal(saved.test_labels, evaluation_batch(cifar10.test, EVAL_SAMPLES, 0)[1])
    assert saved.source == "someone/tiny-a" and saved.class_names == cifar10.class_names
    assert saved.data_config["input_size"] == [3, 32, 32] and saved.split["max_eval_samples"] == EVAL_SAMPLES
    # The best epoch's (not the last epoch's) model: the exported folder, and its val top-1 as logged.
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_top1"])  # the first of equals, as training keeps it
    assert saved.metrics == json.loads((trained_run / "best" / "metrics.json").read_text())
    assert saved.metrics["epoch"] == best["epoch"]
    assert 100 * np.mean(saved.val_probs.argmax(axis=1) == saved.val_labels) == pytest.approx(best["val_top1"])
    member = Member.load(str(trained_run / "best"))
    test_images = evaluation_batch(cifar10.test, EVAL_SAMPLES, 0)[0]
    np.testing.assert_allclose(saved.test_probs_flip, member.probabilities(test_images, tta_flip=True).numpy(),
                               atol=1e-6)
    # The training images it trained on (tiny_run_args: 256 of them), in float16: a student's soft targets.
    np.testing.assert_array_equal(saved.train_indices, subset_indices(len(cifar10.train), 256, 0))
    assert saved.train_probs.dtype == np.float16 and saved.train_probs.shape == (256, 10)
    train_images = torch.from_numpy(cifar10.train.gather(saved.train_indices)).permute(0, 3, 1, 2)
    np.testing.assert_allclose(saved.train_probs_flip, member.probabilities(train_images, tta_flip=True).numpy(),
                               atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True])
def test_report_from_predictions_equals_report_from_model_folders(trained_run, second_member, cifar10_archive,
                                                                  cache_root, tmp_path, tta):
    folder_b, predictions_b = second_member
    flags = ["--tta"] if tta else []
    from_models = evaluate("--models", trained_run / "best", folder_b, "--data-dir", cifar10_archive, "--cache-dir",
                           cache_root, "--max-eval-samples", EVAL_SAMPLES, "--output-dir", tmp_path / "models", *flags)
    assert from_models.returncode == 0, from_models.stderr[-3000:]
    from_files = evaluate("--predictions", trained_run / "predictions.npz", predictions_b,
                          "--output-dir", tmp_path / "files", *flags)
    assert from_files.returncode == 0, from_files.stderr[-3000:]

    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("models", "files"))
    assert [m["source"] for m in b["members"]] == ["someone/tiny-a", "someone/tiny-b"]
    for key in ("val_images", "test_images", "tta_flip", "class_names", "per_class", "confusion_matrix"):
        assert a[key] == b[key], key
    for ours, theirs in zip(a["members"], b["members"]):
        for key in ("weight", "top1", "top3", "nll", "ece", "input_size"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert a["ensemble"].keys() == b["ensemble"].keys()
    for key in a["ensemble"]:
        assert a["ensemble"][key] == pytest.approx(b["ensemble"][key], abs=1e-6), key

    ma, mb = (json.loads((tmp_path / d / "ensemble.json").read_text()) for d in ("models", "files"))
    assert [m["source"] for m in mb["members"]] == ["someone/tiny-a", "someone/tiny-b"]  # named as on the Hub
    assert mb["temperature"] == pytest.approx(ma["temperature"], abs=1e-6) and mb["tta_flip"] == ma["tta_flip"] == tta
    for ours, theirs in zip(ma["members"], mb["members"]):
        assert ours["weight"] == pytest.approx(theirs["weight"], abs=1e-6)
        assert ours["preprocessing"] == theirs["preprocessing"]
    assert mb["conformal"]["cutoff"] == pytest.approx(ma["conformal"]["cutoff"], abs=1e-5)  # prediction sets, too
    assert a["conformal"]["test"]["coverage"] == b["conformal"]["test"]["coverage"]
    assert (tmp_path / "files" / "reliability_diagram.png").stat().st_size > 10_000
    assert (tmp_path / "files" / "confusion_matrix.png").stat().st_size > 10_000


@pytest.mark.slow
def test_files_of_different_data_are_refused_in_one_line(trained_run, second_member, cifar10, cifar10_archive,
                                                         tmp_path):
    folder_b, predictions_b = second_member
    ours = trained_run / "predictions.npz"
    other_split = save_predictions(tmp_path / "seed1.npz", folder_b, cifar10, recipe_config(
        {"model": "test_resnet", "data_dir": str(cifar10_archive), "max_eval_samples": EVAL_SAMPLES, "split_seed": 1,
         "max_train_samples": 256}),
        "someone/tiny-c")
    with np.load(predictions_b) as npz:  # the same file with other class names
        arrays = dict(npz)
    meta = json.loads(str(arrays["meta"]))
    meta.update(class_names=[f"c{i}" for i in range(10)], source="someone/tiny-d")
    np.savez(tmp_path / "renamed.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    (tmp_path / "not.npz").write_text("not an npz")
    for files, message in (([ours, other_split], "differ in split"),
                           ([ours, tmp_path / "renamed.npz"], "differ in class names"),
                           ([ours, ours], "name the same member"),
                           ([ours, tmp_path / "missing.npz"], "missing.npz: no such file"),
                           ([ours, tmp_path / "not.npz"], "not a predictions file")):
        result = evaluate("--predictions", *files, "--output-dir", tmp_path / "out")
        assert result.returncode == 2, (files, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
