"""Hyperparameter sweeps: two `python -m vision_ensemble.sweep` workers share one SQLite study of real tiny
training runs; the best trial's options, passed back to finetune.py, reproduce its metric."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from conftest import ENV, FINETUNE, REPO, make_image_folder, run, run_in_process
from vision_ensemble.training.sweep import finetune_args, load_space, read_epochs

SPACE = """\
lr: {low: 0.0001, high: 0.1, log: true}
drop_path_rate: {low: 0.0, high: 0.2}
ema_decay: {choices: [0.9, 0.99]}
"""


@pytest.mark.slow
def test_two_workers_share_one_study_and_the_best_trial_reproduces(tmp_path):
    data = make_image_folder(tmp_path / "shapes", per_class=24, size=(32, 32))
    (tmp_path / "space.yaml").write_text(SPACE)
    out = tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    train = ["--model", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "2", "--data-dir",
             str(data), "--val-size", "0.25", "--cache-dir", str(tmp_path / "cache")]
    command = [sys.executable, "-m", "vision_ensemble.sweep", "--trials", "4", "--storage", storage, "--study-name",
               "tiny", "--space", str(tmp_path / "space.yaml"), "--output-dir", str(out), "--prune-after", "2",
               "--report-to", "tensorboard", "--", *train]
    workers = [subprocess.Popen(command, env=ENV, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE,
                                                               optuna.trial.TrialState.PRUNED}
    for trial in trials:  # each trial a real run, logged to the trackers training uses, reported epoch by epoch
        run_dir = out / f"trial_{trial.number:03d}"
        rows = read_epochs(run_dir / "metrics.jsonl")
        reported = [trial.intermediate_values[epoch] for epoch in sorted(trial.intermediate_values)]
        assert reported and reported == [r["val_top1"] for r in rows[:len(reported)]]  # in order, as they landed
        assert list((run_dir / "vision_ensemble").glob("events.out.tfevents.*"))
        args = json.loads((run_dir / "training_args.json").read_text())
        assert args["lr"] == trial.params["lr"] and args["ema"] and args["ema_decay"] == trial.params["ema_decay"]
        assert args["model_kwargs"] == {"drop_path_rate": trial.params["drop_path_rate"]}
        if trial.state == optuna.trial.TrialState.COMPLETE:  # a pruned run may have written one more epoch
            assert len(reported) == len(rows) == 2

    best = json.loads((out / "best_trial.json").read_text())
    assert best["val_top1"] == study.best_value and best["params"] == study.best_params
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).stat().st_size > 10_000
    run_in_process(FINETUNE, f"@{out / 'best_args.txt'}", "--output-dir", str(tmp_path / "again"))
    alone = read_epochs(tmp_path / "again" / "metrics.jsonl")
    assert max(r["val_top1"] for r in alone) == study.best_value
    # The same run, not only the same score (an 18-image val set gives trials the same top-1).
    in_sweep = read_epochs(out / f"trial_{study.best_trial.number:03d}" / "metrics.jsonl")
    for key in ("train_loss", "val_loss", "val_top1"):
        assert [r[key] for r in alone] == pytest.approx([r[key] for r in in_sweep], rel=1e-6), key


def test_search_space_from_a_file_and_the_options_it_sets(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    assert load_space(str(tmp_path / "space.yaml"))["ema_decay"] == {"choices": [0.9, 0.99]}
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rate": {"low": 0.1, "high": 1}}))
    with pytest.raises(Exception, match="learning_rate is not a finetune option"):
        load_space(str(tmp_path / "bad.json"))
    assert finetune_args({"lr": 0.01, "drop_path_rate": 0.1, "ema_decay": 0.99, "mixup_alpha": 0.5}) == [
        "--lr", "0.01", "--ema-decay", "0.99", "--mixup-alpha", "0.5", "--ema", "--model-kwargs",
        '{"drop_path_rate": 0.1}']


@pytest.mark.slow
def test_trial_time_limit_reaches_finetune(tmp_path):
    data = make_image_folder(tmp_path / "shapes", per_class=8, size=(32, 32))
    out = tmp_path / "sweep"
    run([sys.executable, "-m", "vision_ensemble.sweep", "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}",
         "--output-dir", str(out), "--trial-time-limit", "0.05", "--", "--model", "test_resnet", "--img-size", "32",
         "--batch-size", "8", "--data-dir", str(data), "--val-size", "0.25", "--cache-dir", str(tmp_path / "cache")])
    args = json.loads((out / "trial_000" / "training_args.json").read_text())
    assert args["time_limit"] == 0.05  # 3 s: the trial's first epoch measures, and is all that fits
    assert "--time-limit\n0.05\n" in (out / "best_args.txt").read_text()
