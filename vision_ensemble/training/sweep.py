"""Hyperparameter sweeps with Optuna: each trial is a real `train/finetune.py` run (a subprocess, so a trial
can itself be an `accelerate launch`), scored by its best validation top-1; its metrics.jsonl is read as it
grows, each epoch reported to the median pruner, and a weak trial is stopped early.  The study lives in a
database (`--storage`), so the same command started on several machines works on one study: Optuna's own
distributed mode.  When the study is done: the best trial's options as `best_args.txt` (pass it back as
`finetune.py @best_args.txt`) and `best_trial.json`, the optimisation history and the parameter importances as
PNGs."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

from ..config import SWEEP_PRUNE_AFTER, SWEEP_SPACE, SWEEP_STORAGE, SWEEP_TRIALS, TrainConfig
from ..plots import save

FINETUNE = Path(__file__).resolve().parents[2] / "train" / "finetune.py"
MODEL_KWARGS = ("drop_path_rate",)  # searched options that are timm.create_model arguments
POLL_S = 2.0  # how often a running trial's metrics.jsonl is read


class SweepError(RuntimeError):
    pass


def load_space(path: str | None) -> dict:
    """The search space: config.SWEEP_SPACE, or a YAML/JSON file of the same shape."""
    if path is None:
        return SWEEP_SPACE
    text = Path(path).read_text()
    if Path(path).suffix in (".yaml", ".yml"):
        import yaml

        space = yaml.safe_load(text)
    else:
        space = json.loads(text)
    options = {f.name for f in fields(TrainConfig) if f.init} | set(MODEL_KWARGS)
    for name, spec in space.items():
        if name not in options:
            raise SweepError(f"{path}: {name} is not a finetune option (nor one of {', '.join(MODEL_KWARGS)})")
        if not (isinstance(spec, dict) and ("choices" in spec or {"low", "high"} <= spec.keys())):
            raise SweepError(f"{path}: {name} needs low and high, or choices")
    return space


def suggest(trial, space: dict) -> dict:
    """One value per searched option: categorical, integer or float range as the space says."""
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    return params


def finetune_args(params: dict) -> list[str]:
    """The finetune.py options that set `params`."""
    args, model_kwargs = [], {}
    for name, value in params.items():
        if name in MODEL_KWARGS:
            model_kwargs[name] = value
        else:
            args += [f"--{name.replace('_', '-')}", str(value)]
    if "ema_decay" in params:
        args.append("--ema")
    if model_kwargs:
        args += ["--model-kwargs", json.dumps(model_kwargs)]
    return args


def read_epochs(metrics_file: Path) -> list[dict]:
    """The complete rows of a metrics.jsonl that is still being written."""
    if not metrics_file.exists():
        return []
    text = metrics_file.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def run_trial(trial, command: list[str], run_dir: Path) -> float:
    """Train, report each epoch's val top-1 as it lands, stop the run if the pruner says so; the best val top-1."""
    import optuna

    run_dir.mkdir(parents=True, exist_ok=True)
    reported = 0
    with (run_dir / "sweep_trial.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                done = process.poll() is not None
                rows = read_epochs(run_dir / "metrics.jsonl")
                for row in rows[reported:]:
                    trial.report(row["val_top1"], row["epoch"])
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"val top-1 {row['val_top1']:.2f} after epoch {row['epoch']}")
                reported = len(rows)
                if done:
                    break
                time.sleep(POLL_S)
        finally:  # pruned, or the sweep interrupted: the run stops with it
            if process.poll() is None:
                process.terminate()
                process.wait()
    if process.returncode != 0 or not rows:
        tail = (run_dir / "sweep_trial.log").read_text().strip().splitlines()[-1:] or ["no output"]
        raise SweepError(f"trial {trial.number} failed (exit {process.returncode}): {tail[0]} "
                         f"(log: {run_dir / 'sweep_trial.log'})")
    return max(row["val_top1"] for row in rows)


def write_results(study, output_dir: Path, fixed: list[str]) -> list[Path]:
    """best_args.txt (finetune.py @best_args.txt), best_trial.json and the two PNGs; what was written."""
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the plots' API label
    output_dir.mkdir(parents=True, exist_ok=True)
    best = study.best_trial
    args = fixed + finetune_args(best.params)
    (output_dir / "best_args.txt").write_text("\n".join(args) + "\n")
    (output_dir / "best_trial.json").write_text(json.dumps(
        {"study": study.study_name, "trial": best.number, "val_top1": best.value, "params": best.params,
         "finetune_args": args, "run_dir": best.user_attrs.get("run_dir")}, indent=2))
    written = [output_dir / "best_args.txt", output_dir / "best_trial.json"]
    plots = {"optimization_history.png": plot_optimization_history}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) > 1 and len(best.params) > 1:  # importances need two finished trials to compare
        plots["param_importances.png"] = plot_param_importances
    for name, plot in plots.items():
        figure = plot(study).figure
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()  # long option names stay inside the picture
        written.append(save(figure, output_dir / name))
    return written


def open_study(args, attempts: int = 5):
    """Create the study, or join it: workers started together race to create the database's tables, and the
    loser of that race (an integrity or locking error) finds them made when it tries again."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=args.study_name, storage=args.storage, load_if_exists=True, direction="maximize",
                sampler=optuna.samplers.TPESampler(seed=args.seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=args.prune_after, n_warmup_steps=0))
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vision_ensemble.sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__ + "\n\nexample:\n  python -m vision_ensemble.sweep --trials 40 --study-name cifar-seresnet "
        "-- --model seresnet50 --data-dir ../shared/data/cifar10.tar.gz --epochs 10\n"
        "Options after -- are passed to every trial unchanged; the searched ones (config.SWEEP_SPACE or --space) "
        "are added.")
    p.add_argument("--trials", type=int, default=SWEEP_TRIALS, help="trials in the whole study (all workers)")
    p.add_argument("--storage", default=SWEEP_STORAGE,
                   help="Optuna storage URL; workers on several machines share a study through one server database "
                        "(e.g. postgresql://...), on one machine through sqlite")
    p.add_argument("--study-name", default="sweep", help="the study (continued if it exists in --storage)")
    p.add_argument("--space", help="YAML/JSON search space replacing config.SWEEP_SPACE")
    p.add_argument("--output-dir", type=Path, help="trial run folders and the results (default: sweeps/<study-name>)")
    p.add_argument("--trial-time-limit", type=float, metavar="MINUTES",
                   help="per-trial training budget, finetune's --time-limit: each trial trains the epochs that fit "
                        "(otherwise --epochs bounds each trial)")
    p.add_argument("--prune-after", type=int, default=SWEEP_PRUNE_AFTER,
                   help="finished trials before the median pruner may stop a trial whose epoch is below the median")
    p.add_argument("--launch", default=sys.executable,
                   help="how a trial starts finetune.py, e.g. 'accelerate launch --multi_gpu --num_processes 8'")
    p.add_argument("--seed", type=int, help="sampler seed (repeatable with a single worker)")
    p.add_argument("--report-to", default="none", help="trackers every trial logs to, as finetune's --report-to")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fixed = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        try:
            import optuna
        except ModuleNotFoundError:
            raise SweepError("sweeps need Optuna: pip install 'vision-ensemble[sweep]'") from None
        space = load_space(args.space)
        if args.trial_time_limit is not None:
            fixed += ["--time-limit", f"{args.trial_time_limit:g}"]
        if not FINETUNE.exists():
            raise SweepError(f"{FINETUNE} not found: run the sweep from a checkout of the repository")
    except (SweepError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output_dir = args.output_dir or Path("sweeps") / args.study_name
    study = open_study(args)

    def objective(trial) -> float:
        params = suggest(trial, space)
        run_dir = output_dir / f"trial_{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        command = [*shlex.split(args.launch), str(FINETUNE), *fixed, *finetune_args(params),
                   "--output-dir", str(run_dir), "--report-to", args.report_to]
        return run_trial(trial, command, run_dir)

    # The study stops at --trials however many workers share it (running, pruned and failed trials count too);
    # a failed trial is recorded and the sweep goes on.
    if len(study.get_trials(deepcopy=False)) < args.trials:
        study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=None)],
                       catch=(SweepError,))
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        print(f"error: no trial of study {args.study_name} finished (logs: {output_dir}/trial_*/sweep_trial.log)",
              file=sys.stderr)
        return 2
    written = write_results(study, output_dir, fixed)
    best = study.best_trial
    print(f"best trial {best.number}: val top-1 {best.value:.2f} with {json.dumps(best.params)}")
    print(f"wrote {', '.join(p.name for p in written)} to {output_dir}; train it again with: "
          f"python train/finetune.py @{output_dir / 'best_args.txt'} --output-dir runs/best")
    return 0
