"""Training for a wall-clock budget (`--time-limit`): the first epoch measures the speed, then the number of epochs
that fits is fixed and the warmup + cosine schedule rebuilt to end with it (until then the run follows the warmup of
a long schedule, `undecided_horizon`; where the new count caps the warmup shorter, the rate steps up to the shorter
ramp).  The main process decides and broadcasts, so every rank runs the same count.  The pace can change after the
decision (another process starts or stops sharing the GPU or the cores): after each later epoch the count is fitted
again to the recent epochs' pace (as Ultralytics' `time` does, which takes the mean since the start) and the
schedule's horizon moved when it is off by more than REPLAN_TOLERANCE.  An epoch so slow that no further one fits
makes `out_of_time` end the run with the schedule cut short, saying so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import psutil
import torch
from accelerate.utils import broadcast
from timm.scheduler import create_scheduler_v2

from ..config import TIME_LIMIT_PROBE_STEPS, TrainConfig

MARGIN = 0.02  # of the limit, kept free for what the estimate misses (process exit, a slower epoch)
OVERRUN = 0.05  # of the limit: `out_of_time` cuts the schedule only for a larger overrun (noise is not cut short)
# After the loop, beside the predictions: loading best/, the curves plot, process exit (2 s on the 2-core CPU,
# alone or beside another run; 6 s, measured when the tests ran as processes of their own, ended runs 10% early).
TAIL_FIXED_S = 2.5
# Re-planning: the pace is the mean of the epochs of the last REPLAN_WINDOW of the limit, at least
# REPLAN_AFTER_EPOCHS of them (fewer are noise), and the count moves when it is off by more than the tolerance
# (each move steps the rate a little; the first epochs' noise on a shared machine is within it).  A window that
# reached back further (half the epochs since the decision) still held a slow spell of another test's after it
# had passed, and ended runs 12% early.
REPLAN_AFTER_EPOCHS = 6
REPLAN_WINDOW = 0.1  # of the limit
REPLAN_TOLERANCE = 0.05  # of the epochs left, at least one epoch (of the whole count, it left 3 epochs unused)


def cosine_schedule(optimizer, cfg: TrainConfig, updates_per_epoch: int, horizon: int | None = None):
    """timm's per-step warmup + cosine over `horizon` epochs (default `cfg.epochs`).  A warmup as long as the run (a
    1-epoch quick run under a 2-epoch recipe warmup) would end the run before the rate peaks and skip the decay: it
    is capped at a tenth of the run (the recipes' warmups fit in it).  Returns the scheduler and the warmup in
    epochs."""
    epochs = horizon or cfg.epochs
    warmup_epochs = min(cfg.warmup_epochs, epochs / 10)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=epochs, warmup_epochs=warmup_epochs,
                                       min_lr=cfg.min_lr, warmup_lr=cfg.effective_lr * 1e-3, step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)
    return scheduler, warmup_epochs


def undecided_horizon(cfg: TrainConfig) -> int:
    """The schedule's horizon while `--time-limit` has not decided the count: long enough to leave the warmup whole
    (ten warmups), so that the steps before the decision follow the schedule of every count of at least ten
    warmups.  A run that decides such a count and keeps it (no re-plan) is then the run `--epochs N` trains, step
    for step: the command its card gives reproduces it."""
    return max(cfg.epochs, math.ceil(10 * cfg.warmup_epochs))


def fit_epochs(budget_s: float, elapsed_s: float, step_s: float, steps_per_epoch: int, epoch_end_s: float,
               tail_s: float, steps_done: int, epochs_ended: int) -> int:
    """The most epochs whose remaining steps and epoch ends, plus the tail, fit in what is left of the budget
    (at least 1: the epoch under way finishes).  `steps_done`/`epochs_ended` are already in `elapsed_s`."""
    left = budget_s - elapsed_s - tail_s + steps_done * step_s + epochs_ended * epoch_end_s
    return max(1, math.floor(left / (steps_per_epoch * step_s + epoch_end_s)))


class TimeBudget:
    """The run's clock for `--time-limit`; finetune.py calls `after_step` after each training step and
    `after_epoch` after each checkpoint.  Both return the number of epochs when they decide it, else None.

    The budget runs from this process's start (under `accelerate launch`, the worker's, not the launcher's) to its
    end.  Steps 2 to N of the first epoch give the time of a step (N = the epoch's steps, or TIME_LIMIT_PROBE_STEPS
    when it is longer; step 1 carries one-off costs such as cuDNN autotuning).  A first epoch within the probe is
    decided on at its end, after its evaluation, export and checkpoint, so those costs are measured (finetune.py
    then writes that checkpoint again, holding the count); a longer one mid-epoch, its evaluation estimated as one
    training step per evaluation batch (twice the images, no backward pass) and its checkpoint not counted.  The
    work after the loop (the best model's predictions on val, test and the training images, with and without flip)
    is `tail_images` times `time_prediction()`, the seconds an image of them takes on their own path, measured when
    the count is decided (in fp32: the loop's evaluation under bf16 autocast ran 3x faster on the CPU, and a tail
    scaled from it ended 60-minute runs 4 minutes late), plus TAIL_FIXED_S."""

    def __init__(self, minutes: float, accelerator, steps_per_epoch: int, eval_batches: int, tail_images: int,
                 time_prediction: Callable[[], float],
                 probe_steps: int = TIME_LIMIT_PROBE_STEPS, started_at: float | None = None):
        self.limit_s = minutes * 60
        self.budget_s = self.limit_s * (1 - MARGIN)
        self.started_at = psutil.Process().create_time() if started_at is None else started_at
        self.accelerator = accelerator
        self.steps_per_epoch, self.eval_batches = steps_per_epoch, eval_batches
        self.tail_images, self.time_prediction = tail_images, time_prediction
        self.probe_steps = min(probe_steps, steps_per_epoch)
        self.loop_started = self.first_step_end = self.train_end = time.time()
        self.epoch_end = self.last_epoch_s = None
        self.step_s = self.epoch_end_s = self.tail_s = self.prediction_s = None
        self.epochs = self.decided_after = None
        self.epoch_ends: dict[int, float] = {}
        self.pace = None  # seconds an epoch, as planned
        self.replanned = None  # (after epoch, from count, pace planned) of the latest re-plan

    def elapsed(self) -> float:
        return time.time() - self.started_at

    def _now(self) -> float:  # after the device has caught up with the queued steps
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.time()

    def after_step(self, step: int) -> int | None:
        """Call after each training step; decides at the end of a probe shorter than the first epoch."""
        if step == self.steps_per_epoch:
            self.train_end = time.time()
        if self.step_s is not None:
            return None
        if step == 1:
            self.first_step_end = self._now()
        if step == self.probe_steps:
            now = self._now()
            self.step_s = (now - self.first_step_end) / (step - 1) if step > 1 else now - self.loop_started
            self.train_end = now
            if step < self.steps_per_epoch:  # a long epoch: decide now, its end estimated
                return self._decide(self.eval_batches * self.step_s, steps_done=step, epochs_ended=0)
        return None

    def after_epoch(self, epoch: int, export_s: float = 0.0) -> int | None:
        """Call after each epoch's checkpoint with its export time; decides after the first epoch
        (when its steps were all probed), or after the second when at least 3 epochs fit: the first epoch carries
        one-off costs, so the second, whole, is measured instead.  The export of a new best model is left out of
        the per-epoch cost: it happens in most early epochs and few late ones (counted in every epoch, it ended
        runs of many short epochs 15-30% early).  After the decision, each epoch may re-plan the count (`_replan`)."""
        previous, self.epoch_end = self.epoch_end, time.time()
        self.last_epoch_s = self.epoch_end - (previous or self.loop_started)
        self.epoch_ends[epoch] = self.epoch_end
        if self.epochs is not None:
            return self._replan(epoch)
        if epoch == 2:
            self.step_s = (self.train_end - previous) / self.steps_per_epoch
        epochs = self._decide(self.epoch_end - self.train_end - export_s, self.steps_per_epoch * epoch, epoch)
        if epoch == 1 and epochs >= 3:
            self.epochs, self.epoch_end = None, time.time()  # the second epoch's time leaves out the tail's probe
            return None
        self.decided_after = epoch
        return epochs

    def _replan(self, epoch: int) -> int | None:
        """The count fitted again to the pace of the recent epochs (those ended in the last REPLAN_WINDOW of the
        limit, at least REPLAN_AFTER_EPOCHS, all after the decision); a new count when it differs by more than
        REPLAN_TOLERANCE and at least one more epoch fits, else None."""
        since = max(self.decided_after or 0, 1)  # the first epoch's one-off costs are never the pace
        if epoch - since < REPLAN_AFTER_EPOCHS or epoch >= self.epochs:
            return None
        ends, first = self.epoch_ends, epoch - REPLAN_AFTER_EPOCHS
        while first > since and ends[epoch] - ends[first - 1] <= REPLAN_WINDOW * self.limit_s:
            first -= 1
        pace = (ends[epoch] - ends[first]) / (epoch - first)
        left = self.budget_s - self.elapsed() - self.tail_s
        fitted = epoch + math.floor(left / pace) if left >= pace else self.epochs  # none fits: out_of_time decides
        if abs(fitted - self.epochs) <= max(1.0, REPLAN_TOLERANCE * (self.epochs - epoch)):
            fitted = self.epochs
        # Every rank asks (the same epochs); the main process's answer counts.
        fitted = int(broadcast(torch.tensor([fitted], device=self.accelerator.device), from_process=0).item())
        if fitted == self.epochs:
            return None
        self.replanned, self.epochs, self.pace = (epoch, self.epochs, self.pace), fitted, pace
        return fitted

    def _decide(self, epoch_end_s: float, steps_done: int, epochs_ended: int) -> int:
        self.epoch_end_s = epoch_end_s
        self.pace = self.steps_per_epoch * self.step_s + epoch_end_s
        if self.prediction_s is None:  # measured once
            self.prediction_s = self.time_prediction() if self.tail_images else 0.0
        self.tail_s = self.tail_images * self.prediction_s + TAIL_FIXED_S
        epochs = fit_epochs(self.budget_s, self.elapsed(), self.step_s, self.steps_per_epoch, epoch_end_s,
                            self.tail_s, steps_done, epochs_ended)
        # Each rank timed itself; the main process's count is the one everybody runs.
        self.epochs = int(broadcast(torch.tensor([epochs], device=self.accelerator.device), from_process=0).item())
        return self.epochs

    def describe(self) -> str:
        if self.replanned is not None:
            epoch, before, planned_pace = self.replanned
            return (f"--time-limit {self.limit_s / 60:g} min: re-planned after epoch {epoch}, {before} -> "
                    f"{self.epochs} epoch(s): the recent epochs took {self.pace:.3g} s, not the {planned_pace:.3g} s "
                    f"planned ({self.elapsed():.0f} s spent so far)")
        only_measured = self.epochs == 1 and self.epoch_end is not None  # decided after its only epoch
        return (f"--time-limit {self.limit_s / 60:g} min: {self.epochs} epoch(s) fit (a step {self.step_s:.3g} s "
                f"x {self.steps_per_epoch}, evaluation and checkpoint {self.epoch_end_s:.3g} s per epoch, "
                f"{self.tail_s:.3g} s kept for the predictions after training, {self.elapsed():.0f} s spent so far)"
                + ("; the limit holds only the epoch that measured it, which ran on the schedule of --epochs: give "
                   "more time for a completed schedule" if only_measured else ""))

    def out_of_time(self, epoch: int) -> bool:
        """After an epoch past the decision: True when the next epoch, as long as this one was, would end more than
        OVERRUN past the limit (the estimate was wrong).  Agreed across ranks (the main process's clock)."""
        if self.epochs is None or epoch >= self.epochs or epoch <= 1:
            return False
        late = int(self.elapsed() + self.last_epoch_s + self.tail_s > self.limit_s * (1 + OVERRUN))
        return bool(broadcast(torch.tensor([late], device=self.accelerator.device), from_process=0).item())
