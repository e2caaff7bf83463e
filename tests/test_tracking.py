"""Experiment tracking: real `accelerate launch` runs logging to a local MLflow store, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import ENV, FINETUNE, REPO, tiny_run_args

EVALUATE = str(REPO / "evaluation" / "evaluate.py")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
          "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", FINETUNE]
# Hides the packages named in VISION_ENSEMBLE_TEST_BLOCK from the subprocess, as if they were not installed: with
# None in sys.modules, `import` raises ModuleNotFoundError and importlib.util.find_spec (Accelerate's check) says None.
BLOCKER = """
import os, sys
for name in os.environ["VISION_ENSEMBLE_TEST_BLOCK"].split(","):
    sys.modules[name] = None
"""


def run(cmd, env, cwd, check=True):
    # cwd: MLflow's default artifact root (./mlruns) lands in the test folder, not the repository.
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]  # for MlflowClient in this process
    yield root, env
    del os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="module")
def interrupted_then_resumed(cifar10, cifar10_archive, cache_root, store):
    """Two 2-process launches into one output folder: stop after epoch 1, then --resume latest."""
    root, env = store
    out = root / "run"
    args = tiny_run_args(cifar10_archive, cache_root, out, "--report-to", "mlflow")
    run([*LAUNCH, *args, "--stop-after-epoch", "1"], env, root)
    first_run_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    first_history = [m.step for m in MlflowClient().get_metric_history(first_run_id, "val_top1")]
    run([*LAUNCH, *args, "--resume", "latest"], env, root)
    return out, first_run_id, first_history


def training_runs():
    client = MlflowClient()
    experiment = client.get_experiment_by_name("vision_ensemble")
    return client.search_runs([experiment.experiment_id], "tags.model = 'test_resnet'")


def test_two_process_run_logs_one_mlflow_run_with_options_metrics_and_artifacts(interrupted_then_resumed):
    out, first_run_id, first_history = interrupted_then_resumed
    assert first_history == [1]
    runs = training_runs()
    assert len(runs) == 1, [r.info.run_name for r in runs]  # main process only, and the resume continued it
    run_info = runs[0]
    assert run_info.info.run_id == first_run_id == json.loads((out / "tracking.json").read_text())["mlflow"]
    assert run_info.info.status == "FINISHED"
    assert run_info.info.run_name.startswith("test_resnet-cifar10-")
    assert run_info.data.tags["model"] == "test_resnet" and run_info.data.tags["dataset"] == "cifar10"

    params = run_info.data.params
    training_args = json.loads((out / "training_args.json").read_text())
    assert set(params) == set(training_args)  # every option, including None and dict ones
    assert params["lr"] == "0.001" and params["warmup_epochs"] == "1" and params["model_kwargs"] == "{}"
    assert json.loads(run_info.data.tags["changed_on_resume"])["resume"] == "latest"

    client = MlflowClient()
    history = client.get_metric_history(first_run_id, "val_top1")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([r["val_top1"] for r in rows])
    assert [m.step for m in client.get_metric_history(first_run_id, "train_loss")] == [1, 2]

    top = {a.path for a in client.list_artifacts(first_run_id)}
    assert {"best", "training_curves.png", "metrics.jsonl"} <= top
    best = {a.path.removeprefix("best/"): a.file_size for a in client.list_artifacts(first_run_id, "best")}
    assert {"model.safetensors", "config.json", "metrics.json", "training_args.json", "README.md"} <= set(best)
    assert best["model.safetensors"] == (out / "best" / "model.safetensors").stat().st_size
    curves = client.download_artifacts(first_run_id, "training_curves.png", str(out.parent))
    assert open(curves, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluation_logs_its_own_run_linked_to_the_member(interrupted_then_resumed, cifar10_archive, cache_root, store):
    root, env = store
    out, training_run_id, _ = interrupted_then_resumed
    results = root / "results"
    evaluation = run([sys.executable, EVALUATE, "--models", str(out / "best"), "--data-dir", str(cifar10_archive),
                      "--cache-dir", str(cache_root), "--output-dir", str(results), "--max-eval-samples", "64",
                      "--report-to", "mlflow"], env, root)
    run_id = evaluation.stdout.split("logged to MLflow run ")[1].split()[0]
    client = MlflowClient()
    logged = client.get_run(run_id)
    assert logged.info.run_name.startswith("ensemble-cifar10-")
    assert logged.data.tags["member_0_run_id"] == training_run_id
    report = json.loads((results / "report.json").read_text())
    assert logged.data.metrics["top1"] == pytest.approx(report["ensemble"]["top1"])
    assert logged.data.metrics["member_0_top1"] == pytest.approx(report["members"][0]["top1"])
    assert logged.data.metrics["temperature"] == pytest.approx(report["ensemble"]["temperature"])
    assert {"report.json", "ensemble.json", "confusion_matrix.png", "reliability_diagram.png"} <= \
        {a.path for a in client.list_artifacts(run_id)}
    assert len(training_runs()) == 1  # the evaluation did not add to the training run


@pytest.mark.parametrize("report_to, missing", [("mlflow", "mlflow"), ("all", "wandb")])
def test_missing_tracker_stops_before_any_data_is_decoded(cifar10_archive, tmp_path, report_to, missing):
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(BLOCKER)
    env = {**ENV, "PYTHONPATH": str(tmp_path / "shim"), "VISION_ENSEMBLE_TEST_BLOCK": missing}
    cache, out = tmp_path / "cache", tmp_path / "run"
    result = run([sys.executable, FINETUNE, *tiny_run_args(cifar10_archive, cache, out, "--report-to", report_to)],
                 env, tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --report-to {report_to} needs {missing}, which is not installed; "
        "install it with: pip install 'vision-ensemble[tracking]'"]
    assert not cache.exists() and not out.exists()  # nothing decoded, nothing trained


def test_evaluation_with_a_missing_tracker_stops_before_loading(cifar10_archive, tmp_path):
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(BLOCKER)
    env = {**ENV, "PYTHONPATH": str(tmp_path / "shim"), "VISION_ENSEMBLE_TEST_BLOCK": "mlflow"}
    result = run([sys.executable, EVALUATE, "--models", str(tmp_path / "no-such-member"), "--data-dir",
                  str(cifar10_archive), "--cache-dir", str(tmp_path / "cache"), "--report-to", "mlflow"],
                 env, tmp_path, check=False)
    assert result.returncode == 2
    assert "pip install 'vision-ensemble[tracking]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()


def test_a_run_stopped_by_a_nan_loss_ends_failed_not_running(cifar10, cifar10_archive, cache_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run([sys.executable, FINETUNE, *tiny_run_args(cifar10_archive, cache_root, tmp_path / "run",
                                                           "--report-to", "mlflow", "--fail-at-epoch", "2")],
                 {**ENV, "MLFLOW_TRACKING_URI": uri}, tmp_path, check=False)
    assert result.returncode == 2 and "loss became nan in epoch 2" in result.stderr
    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((tmp_path / "run" / "tracking.json").read_text())["mlflow"]
    logged = client.get_run(run_id)
    assert logged.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "val_top1")] == [1]  # epoch 1 was logged
