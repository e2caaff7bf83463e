"""--time-limit: the epoch arithmetic, the decision points of TimeBudget (on a fake clock), and real CPU runs that
end on time with the cosine schedule completed, also across an interruption and two processes."""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FINETUNE, run
from vision_ensemble.config import default_cache_size
from vision_ensemble.training import time_budget
from vision_ensemble.evaluation.predictions import prediction_images, seconds_per_predicted_image
from vision_ensemble.hub import schedule_note
from vision_ensemble.training.time_budget import TAIL_FIXED_S, TimeBudget, fit_epochs

MIN_LR = 1e-6  # TrainConfig.min_lr: where the cosine schedule ends


def planned_time(epochs, elapsed, step_s, steps, end_s, tail_s, steps_done, ended):
    return elapsed + (epochs * steps - steps_done) * step_s + (epochs - ended) * end_s + tail_s


def test_fit_epochs_takes_the_most_epochs_that_fit():
    # 100 s budget, 10 s spent on one whole 2 s epoch and the start-up, 5 s for the predictions: 43 epochs of 2 s.
    assert fit_epochs(100, 10, 0.1, 10, 1.0, 5, steps_done=10, epochs_ended=1) == 43
    assert fit_epochs(100, 99, 0.1, 10, 1.0, 5, steps_done=10, epochs_ended=1) == 1  # over budget: finish the epoch
    rng = np.random.default_rng(0)
    for _ in range(2000):
        budget, step_s = rng.uniform(30, 3600), rng.uniform(1e-3, 1)
        end_s, tail_s = rng.uniform(0, 20), rng.uniform(0, 30)
        steps = int(rng.integers(1, 2000))
        steps_done, ended = (steps, 1) if rng.random() < 0.5 else (int(rng.integers(1, steps + 1)), 0)
        elapsed = rng.uniform(0, 20) + steps_done * step_s + ended * end_s
        args = (elapsed, step_s, steps, end_s, tail_s, steps_done, ended)
        epochs = fit_epochs(budget, *args)
        assert epochs >= 1
        if epochs > 1:
            assert planned_time(epochs, *args) <= budget + 1e-6
        assert planned_time(epochs + 1, *args) > budget - 1e-6


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class CpuAccelerator:
    device = torch.device("cpu")


# The predictions after training: 600 images of 0.01 s (TimeBudget times them on the model when it decides).
SIX_SECOND_TAIL = {"tail_images": 600, "time_prediction": lambda: 0.01}


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time_budget.time, "time", fake)
    return fake


def test_a_long_first_epoch_is_decided_on_its_first_probe_steps(clock):
    # Started 20 s ago; 1000 steps of 0.5 s per epoch, 10 evaluation batches; predictions cost 6 s.
    budget = TimeBudget(60, CpuAccelerator(), steps_per_epoch=1000, eval_batches=10, **SIX_SECOND_TAIL,
                        probe_steps=100, started_at=clock.now - 20)
    decided = []
    for step in range(1, 1001):
        clock.now += 3.0 if step == 1 else 0.5  # step 1 carries the one-off costs and is not counted
        decided.append(budget.after_step(step))
    assert decided[:99] == [None] * 99 and decided[100:] == [None] * 900
    assert budget.step_s == pytest.approx(0.5)
    eval_s = 10 * 0.5  # estimated: one training step per evaluation batch
    expected = fit_epochs(3600 * (1 - time_budget.MARGIN), 20 + 3 + 99 * 0.5, 0.5, 1000, eval_s,
                          6 + TAIL_FIXED_S, 100, 0)
    assert decided[99] == expected == budget.epochs == 6
    assert budget.after_epoch(1) is None  # decided once


def run_epoch(budget, clock, epoch, steps=50, first_step_s=0.2, step_s=0.2, end_s=3.0):
    for step in range(1, steps + 1):
        clock.now += first_step_s if step == 1 else step_s
        assert budget.after_step(step) is None
    clock.now += end_s  # evaluation 1 s, export and checkpoint 2 s
    return budget.after_epoch(epoch)


def test_short_epochs_are_decided_on_the_second_epoch_measured_whole(clock):
    budget = TimeBudget(10, CpuAccelerator(), steps_per_epoch=50, eval_batches=4, **SIX_SECOND_TAIL,
                        started_at=clock.now - 30)
    assert run_epoch(budget, clock, 1, first_step_s=2.0, end_s=8.0) is None  # one-off costs: not the plan's basis
    epochs = run_epoch(budget, clock, 2)
    elapsed = 30 + (2 + 49 * 0.2 + 8) + (50 * 0.2 + 3)
    assert epochs == fit_epochs(600 * (1 - time_budget.MARGIN), elapsed, 0.2, 50, 3.0, 6 + TAIL_FIXED_S, 100, 2)
    assert budget.epoch_end_s == pytest.approx(3.0) and budget.step_s == pytest.approx(0.2)
    # Epochs as planned (13 s) are never stopped; one far slower than planned (103 s) near the end is.
    for epoch in range(3, epochs - 5):
        assert run_epoch(budget, clock, epoch) is None and not budget.out_of_time(epoch)
    assert run_epoch(budget, clock, epochs - 5, step_s=2.0) is None and budget.out_of_time(epochs - 5)


@pytest.mark.parametrize("step_s", [0.1, 0.3])  # the other process stops sharing the cores, or starts
def test_epochs_that_change_pace_after_the_decision_are_replanned_to_end_on_time(clock, step_s):
    budget = TimeBudget(10, CpuAccelerator(), steps_per_epoch=50, eval_batches=4, **SIX_SECOND_TAIL,
                        started_at=clock.now - 30)
    run_epoch(budget, clock, 1, first_step_s=2.0, end_s=8.0)
    planned = count = run_epoch(budget, clock, 2)
    epoch, replans = 2, []
    while epoch < count:
        epoch += 1
        if (new := run_epoch(budget, clock, epoch, step_s=step_s)) is not None:
            replans.append((epoch, new))
            count = new
        assert not budget.out_of_time(epoch)
    assert replans and replans[0][0] == 2 + time_budget.REPLAN_AFTER_EPOCHS  # as soon as the window is full
    assert (count > planned) == (step_s < 0.2) and len(replans) <= 3  # moved, and settled
    end = clock.now + budget.tail_s - budget.started_at
    epoch_s = 50 * step_s + 3.0
    assert 600 * (1 - time_budget.MARGIN) - epoch_s <= end <= 600  # on time: less than one epoch left unused
    assert "re-planned after epoch" in budget.describe() and f"{count} epoch(s)" in budget.describe()


# Another process shares the cores for a spell of epochs, then leaves: 50 steps of 0.2 s (13-s epochs, 23 s in
# the spell), or 10 steps (5-s epochs, 6 s in the spell, thirty of them).
@pytest.mark.parametrize(("steps", "spell_step_s", "spell"), [(50, 0.4, range(10, 20)), (10, 0.3, range(10, 40))])
def test_a_slow_spell_that_passes_leaves_no_time_unused(clock, steps, spell_step_s, spell):
    budget = TimeBudget(10, CpuAccelerator(), steps_per_epoch=steps, eval_batches=4, **SIX_SECOND_TAIL,
                        started_at=clock.now - 30)
    run_epoch(budget, clock, 1, steps, first_step_s=2.0, end_s=8.0)
    planned = count = run_epoch(budget, clock, 2, steps)
    epoch, replans = 2, []
    while epoch < count:
        epoch += 1
        if (new := run_epoch(budget, clock, epoch, steps, step_s=spell_step_s if epoch in spell else 0.2)) is not None:
            replans.append((epoch, new))
            count = new
    # The count fell while the spell lasted and rose again once the recent epochs were fast.
    lowest = min(new for _, new in replans)
    assert lowest < planned and replans[-1][1] > lowest, replans
    # It ends within the budget, with less than 1.5 epochs unused: the last epoch that fits leaves up to one, and
    # the count moves only when it is off by more than one.  (Pacing on half the epochs since the decision held the
    # spell too long and left 25 s and 17 s unused, 1.9 and 3.4 epochs.)
    epoch_s = steps * 0.2 + 3.0
    end = clock.now + budget.tail_s - budget.started_at
    assert budget.budget_s - 1.5 * epoch_s <= end <= budget.budget_s, (end, replans)


def test_the_predictions_are_timed_once_and_the_timing_is_not_an_epoch(clock):
    timings = []

    def time_prediction():  # 5 s on the clock, 0.02 s an image
        timings.append(clock.now)
        clock.now += 5.0
        return 0.02

    budget = TimeBudget(10, CpuAccelerator(), steps_per_epoch=50, eval_batches=4, tail_images=1000,
                        time_prediction=time_prediction, started_at=clock.now - 30)
    run_epoch(budget, clock, 1, first_step_s=2.0, end_s=8.0)
    epochs = run_epoch(budget, clock, 2)
    assert len(timings) == 1 and budget.tail_s == pytest.approx(1000 * 0.02 + TAIL_FIXED_S)
    assert budget.step_s == pytest.approx(0.2)  # the 5 s of timing after epoch 1 are not in epoch 2's steps
    elapsed = 30 + (2 + 49 * 0.2 + 8) + 5 + (50 * 0.2 + 3)
    assert epochs == fit_epochs(600 * (1 - time_budget.MARGIN), elapsed, 0.2, 50, 3.0, 20 + TAIL_FIXED_S, 100, 2)


def test_the_predictions_pace_leaves_out_the_first_pass_at_the_timed_batch_shape():
    """A device that tunes itself for each new batch shape (cuDNN's autotuning, oneDNN's kernels) spends that once:
    it must not be counted in every image of the tail."""
    class TuningMember:  # Member.probabilities' signature; 0.2 s for each new shape, then nothing
        def __init__(self):
            self.shapes = set()

        def probabilities(self, images, flip=False, batch_size=500):
            for batch in images.split(batch_size):
                if batch.shape not in self.shapes:
                    self.shapes.add(batch.shape)
                    time.sleep(0.2)
            return torch.zeros(len(images), 10)

    pace = seconds_per_predicted_image(TuningMember(), torch.zeros(512, 3, 32, 32, dtype=torch.uint8), 1024)
    assert pace < 0.02 / 512  # untuned, it is 0.2 s / 512 images


def test_a_budget_for_fewer_than_three_epochs_is_decided_after_the_first(clock):
    budget = TimeBudget(1, CpuAccelerator(), steps_per_epoch=50, eval_batches=4, **SIX_SECOND_TAIL,
                        started_at=clock.now - 30)
    assert run_epoch(budget, clock, 1) == 1  # 43 s spent, 12 s of predictions: no second 13 s epoch fits
    assert "holds only the epoch that measured it" in budget.describe()


@pytest.fixture(scope="module")
def decoded(cifar10_archive, cache_root):
    """The cache the runs read (64 px for a 32 px model) and its data check, made before any clock starts."""
    from vision_ensemble.data import prepare_cache
    from vision_ensemble.data.check import check_cache

    size = default_cache_size(32)
    check_cache(cifar10_archive, prepare_cache(cifar10_archive, cache_root, size), size)


def read_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def time_limited_args(archive, cache_root, out, minutes, *extra):
    return ["--model", "test_resnet", "--img-size", "32", "--batch-size", "32", "--data-dir", str(archive),
            "--cache-dir", str(cache_root), "--output-dir", str(out), "--max-train-samples", "512",
            "--max-eval-samples", "128", "--time-limit", str(minutes), *extra]


@pytest.mark.slow
@pytest.mark.wall_clock
def test_a_time_limited_run_ends_on_time_with_its_schedule_completed(decoded, cifar10_archive, cache_root, tmp_path):
    minutes = 1.0  # the start-up (imports, the cache, the model) takes 4-10 s of it on the loaded 2-core CPU
    start = time.time()
    # 32 steps an epoch, about a hundred epochs of 0.5 s: their pace changes as other tests come and go on the
    # two cores (runs planned on the first epochs alone ended 10-25% early here): the re-plans follow it.
    result = run([sys.executable, FINETUNE, *time_limited_args(cifar10_archive, cache_root, tmp_path, minutes,
                                                               "--max-train-samples", "1024")])
    wall_s = time.time() - start
    plan = [line for line in result.stdout.splitlines() if line.startswith(f"--time-limit {minutes:g} min: ")]
    epoch_s = [round(r["epoch_time_s"] + r["eval_time_s"], 2) for r in read_rows(tmp_path)]
    assert abs(wall_s - 60 * minutes) <= 0.1 * 60 * minutes, (wall_s, plan, epoch_s)
    chosen = json.loads((tmp_path / "training_args.json").read_text())["epochs"]
    assert "epoch(s) fit" in plan[0]
    assert f" {chosen} epoch(s)" in plan[-1]  # the decision, or the last re-plan (the pace changed: other tests)
    rows = read_rows(tmp_path)
    ran = [r["epoch"] for r in rows]
    assert chosen >= 2 and ran == list(range(1, len(ran) + 1))
    if len(ran) < chosen:  # an epoch so slow that no further one fitted: the guard ended the run and said so
        assert len(ran) >= chosen / 2 and "the schedule cut short" in result.stdout
    else:
        assert rows[-1]["lr"] == pytest.approx(MIN_LR)  # the cosine schedule ended, not cut off
    lrs = [r["lr"] for r in rows]
    # Fixed after epoch 2 (after epoch 1 when fewer than 3 fit): from there the cosine only falls, but for the
    # small step a re-plan makes in the epoch after it.
    replanned = {int(line.split("re-planned after epoch ")[1].split(",")[0]) for line in plan[1:]}
    plans = json.loads((tmp_path / "training_args.json").read_text())["epochs_plans"]  # what the card reads
    assert [e for e, _ in plans[2:]] == sorted(replanned) and plans[-1][1] == chosen
    assert max(lrs) > 100 * MIN_LR
    assert all(lrs[i] <= lrs[i - 1] or i in replanned for i in range(3, len(lrs))), (lrs, replanned)
    # The tail kept for the predictions counts every image they cover (the training images' too).
    with np.load(tmp_path / "predictions.npz") as npz:
        predicted = sum(len(npz[name]) for name in npz.files if "_probs" in name)
    data, cfg = SimpleNamespace(val=range(5_000), test=range(10_000)), SimpleNamespace(max_eval_samples=128)
    assert predicted == 2 * prediction_images(data, cfg, train_images=1024)


@pytest.mark.slow
@pytest.mark.wall_clock
def test_two_processes_agree_on_the_count_and_a_resume_keeps_it(decoded, cifar10_archive, cache_root, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", FINETUNE]
    args = time_limited_args(cifar10_archive, cache_root, tmp_path, 0.5)  # over 2 epochs fit: a decision to keep
    first = run([*launch, *args, "--stop-after-epoch", "2"])
    first_args = json.loads((tmp_path / "training_args.json").read_text())
    chosen = first_args["epochs"]
    assert first.stdout.count("epoch(s) fit") == 1 and chosen > 2  # one decision, printed by the main process
    second = run([*launch, *args, "--resume", "latest"])
    assert "resumed from" in second.stdout and "epoch(s) fit" not in second.stdout  # no new measurement
    second_args = json.loads((tmp_path / "training_args.json").read_text())
    assert second_args["epochs"] == chosen
    assert second_args["epochs_plans"] == first_args["epochs_plans"]  # from the checkpoint: the card keeps them
    rows = read_rows(tmp_path)
    assert [r["epoch"] for r in rows] == list(range(1, chosen + 1))
    assert rows[-1]["lr"] == pytest.approx(MIN_LR)


@pytest.mark.slow
def test_until_the_decision_a_run_trains_as_epochs_n_does(decoded, cifar10_archive, cache_root, tmp_path):
    """Before --time-limit decides, the run follows the warmup that every count of at least ten warmups shares: at
    its second epoch it holds the weights that `--epochs N` (the command its card gives) holds there."""
    timed_args = time_limited_args(cifar10_archive, cache_root, tmp_path / "timed", 60, "--warmup-epochs", "2",
                                   "--stop-after-epoch", "2")  # an hour: far more than 20 epochs fit; stopped at 2
    run([sys.executable, FINETUNE, *timed_args])
    timed_training_args = json.loads((tmp_path / "timed" / "training_args.json").read_text())
    chosen = timed_training_args["epochs"]
    assert chosen >= 20  # a count whose warmup is the recipe's whole 2 epochs
    # ten warmups until the decision after epoch 2, then the count: the card says its command is this run
    assert timed_training_args["epochs_plans"] == [[0, 20], [2, chosen]]
    assert "step for step" in schedule_note(timed_training_args)
    fixed_args = time_limited_args(cifar10_archive, cache_root, tmp_path / "fixed", 60, "--warmup-epochs", "2",
                                   "--stop-after-epoch", "2")
    at = fixed_args.index("--time-limit")
    fixed_args[at:at + 2] = ["--epochs", str(chosen)]
    run([sys.executable, FINETUNE, *fixed_args])
    rows = {name: read_rows(tmp_path / name) for name in ("timed", "fixed")}
    assert rows["timed"][0]["lr"] == rows["fixed"][0]["lr"]  # (epoch 2's row has the rate before the decision)
    timed, fixed = (load_file(tmp_path / name / "checkpoints" / "epoch_002" / "model.safetensors")
                    for name in ("timed", "fixed"))
    assert timed.keys() == fixed.keys() and all(torch.equal(timed[k], fixed[k]) for k in timed)
