"""Experiment tracking through Accelerate's trackers (TensorBoard, MLflow, W&B), and MLflow runs for evaluation.

A tracker the user asks for must record something: `require_trackers` imports each one before any data is
decoded and stops with the install command if one is missing (Accelerate itself would only log a debug
line and train without it).  Training runs get a readable name, model/dataset tags and every option; their
run ids are kept in `<output-dir>/tracking.json` so `--resume` continues the same MLflow (and W&B) run, and
are copied into `best/` so an ensemble evaluation can name the runs its members came from.

MLflow writes where `MLFLOW_TRACKING_URI` points; unset, MLflow 3's default is `sqlite:///mlflow.db` (artifacts
in `./mlruns`) in the working directory, which `mlflow ui` run from the same directory opens.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..config import TRACKERS, TRACKING_INSTALL, TRACKING_PROJECT, TrainConfig
from ..hub import HubError, dataset_name, resolve_member

RUN_IDS_FILE = "tracking.json"  # {"mlflow": run id, "wandb": run id}, in the run folder and in best/
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # what each tracker imports


class TrackingError(RuntimeError):
    """A requested tracker that cannot run, with the command that fixes it."""


def require_trackers(report_to: str) -> list[str]:
    """The trackers `--report-to` names, each checked by importing it (a broken install fails here too)."""
    names = [] if report_to == "none" else list(TRACKERS) if report_to == "all" else [report_to]
    for name in names:
        try:
            importlib.import_module(MODULES[name])
        except ImportError as exc:
            not_installed = isinstance(exc, ModuleNotFoundError) and exc.name == MODULES[name]
            raise TrackingError(f"--report-to {report_to} needs {MODULES[name]}, which "
                                f"{'is not installed' if not_installed else f'fails to import ({exc})'}; "
                                f"install it with: {TRACKING_INSTALL}") from None
    return names


def run_name(prefix: str, data_dir: str) -> str:
    return f"{prefix}-{dataset_name(data_dir)}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_run_ids(folder: str | Path) -> dict:
    path = Path(folder) / RUN_IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _params(cfg: TrainConfig) -> dict:
    """Every option as a tracker-friendly scalar (TensorBoard hparams take no None or dicts)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in asdict(cfg).items()}


def _existing_mlflow_run(run_id: str | None):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        print(f"mlflow: run {run_id} from {RUN_IDS_FILE} is not in this tracking store; starting a new run")
        return None


def start_trackers(accelerator, cfg: TrainConfig, output_dir: Path) -> None:
    """`accelerator.init_trackers` with a readable run name, model/dataset tags and every option logged.

    With `--resume`, continues the runs recorded in `<output-dir>/tracking.json`.  Call after the main process
    has created `output_dir`; Accelerate starts trackers on the main process only.
    """
    trackers = {str(t) for t in accelerator.log_with}  # LoggerType members; str() gives the tracker name
    if not trackers or not accelerator.is_main_process:
        return
    name = run_name(cfg.model, cfg.data_dir)
    tags = {"model": cfg.model, "dataset": dataset_name(cfg.data_dir)}
    saved = read_run_ids(output_dir) if cfg.resume else {}
    mlflow_run = _existing_mlflow_run(saved.get("mlflow")) if "mlflow" in trackers else None
    init_kwargs = {
        # run_id resumes the run (its name stays); otherwise run_name names the new one.
        "mlflow": {"tags": tags, **({"run_id": mlflow_run.info.run_id} if mlflow_run else {"run_name": name})},
        "wandb": {"name": name, "tags": list(tags.values()), "dir": str(output_dir),
                  **({"id": saved["wandb"], "resume": "allow"} if saved.get("wandb") else {})},
    }
    accelerator.init_trackers(TRACKING_PROJECT, init_kwargs={k: v for k, v in init_kwargs.items() if k in trackers})
    params = _params(cfg)
    for tracker in accelerator.trackers:
        values = params
        if tracker.name == "mlflow" and mlflow_run is not None:
            # MLflow params cannot change: keep the first values, note this invocation's (e.g. resume=latest).
            logged = mlflow_run.data.params
            changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)}
            values = {k: v for k, v in params.items() if k not in changed}
            if changed:
                import mlflow

                mlflow.set_tag("changed_on_resume", json.dumps(changed))
        tracker.store_init_configuration(values)
    run_ids = {t.name: t.tracker.info.run_id if t.name == "mlflow" else t.tracker.id
               for t in accelerator.trackers if t.name in ("mlflow", "wandb")}
    if run_ids:
        (output_dir / RUN_IDS_FILE).write_text(json.dumps(run_ids, indent=2))


def end_failed_runs() -> None:
    """End the MLflow and W&B runs a failed training left open as FAILED.  Call when training stops on an exception:
    a run that finished has already been ended by Accelerate's `end_training`, so this does nothing then.  Without
    it MLflow's exit hook would mark the failed run FINISHED (or leave it RUNNING if the process is killed)."""
    if sys.modules.get("mlflow") is not None:  # None: a test (or a user) blocked the import
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
    if sys.modules.get("wandb") is not None:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1)


def log_run_files(accelerator, output_dir: Path) -> None:
    """After training (main process): copy the run ids into best/ and give MLflow best/, curves and metrics."""
    active = {str(t) for t in accelerator.log_with}  # ignore ids an earlier, differently tracked run left behind
    run_ids = {k: v for k, v in read_run_ids(output_dir).items() if k in active}
    best = output_dir / "best"
    if not run_ids or not best.is_dir():
        return
    (best / RUN_IDS_FILE).write_text(json.dumps(run_ids, indent=2))
    if "mlflow" in run_ids:
        from mlflow import MlflowClient

        client = MlflowClient()  # the run has ended with Accelerate's end_training; the client logs by id
        client.log_artifacts(run_ids["mlflow"], str(best), "best")
        for name in ("training_curves.png", "metrics.jsonl"):
            if (output_dir / name).is_file():
                client.log_artifact(run_ids["mlflow"], str(output_dir / name))


def log_evaluation(report: dict, output_dir: Path) -> str:
    """An MLflow run for an ensemble evaluation: its metrics, report.json, ensemble.json and plots, tagged with
    the training runs of the members that recorded one (`tracking.json` in their folder).  Returns the run id."""
    import mlflow

    tags = {"dataset": dataset_name(report["data_dir"]), "members": ", ".join(m["source"] for m in report["members"])}
    metrics = {k: v for k, v in report["ensemble"].items() if isinstance(v, (int, float))}
    for i, member in enumerate(report["members"]):
        metrics.update({f"member_{i}_{k}": member[k] for k in ("top1", "top3", "nll", "ece", "weight")})
        try:
            member_run = read_run_ids(resolve_member(member["source"])).get("mlflow")  # cached when it was loaded
        except HubError:  # a link we cannot make must not cost the evaluation run
            member_run = None
        if member_run:
            tags[f"member_{i}_run_id"] = member_run
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", TRACKING_PROJECT))  # as Accelerate's tracker
    with mlflow.start_run(run_name=run_name("ensemble", report["data_dir"]), tags=tags) as run:
        mlflow.log_params({"members": tags["members"], "tta_flip": report["tta_flip"], "data_dir": report["data_dir"],
                           "val_images": report["val_images"], "test_images": report["test_images"],
                           "command": report["command"][:6000]})
        mlflow.log_metrics(metrics)
        for name in ("report.json", "ensemble.json", "confusion_matrix.png", "reliability_diagram.png"):
            mlflow.log_artifact(str(output_dir / name))
    return run.info.run_id
