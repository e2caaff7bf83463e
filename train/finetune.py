"""Fine-tune (or train from scratch) a timm backbone and export it in timm's Hugging Face Hub format.

    accelerate launch train/finetune.py --model seresnet50 --data-dir ../shared/data/cifar10.tar.gz
    accelerate launch train/finetune.py --teacher results/ensemble.json --data-dir ../shared/data/cifar10.tar.gz

With `--teacher` the run distils a student from an ensemble (`vision_ensemble/training/distill.py`).

Reads top to bottom: config -> data -> model -> optimisation -> loop (train, evaluate, checkpoint, export)
-> publish.  Every option is documented in `--help`; per-backbone defaults are the recipes in
`vision_ensemble/config.py`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from vision_ensemble.config import (DEFAULT_CROP_PCT, WHITENING_IMAGES, TrainConfig, build_parser, default_cache_size,
                                    recipe_config)
from vision_ensemble.data import (BalancedSampler, BatchTransform, DataError, DeviceImageDataset, choose_augment,
                                  device_loader, fits_on_device, load_dataset, stream_loader, subset_indices,
                                  train_transform)
from vision_ensemble.data.check import check_cache, leakage, summary_lines
from vision_ensemble.evaluation.predictions import (PredictionsError, prediction_images, save_predictions,
                                                     seconds_per_predicted_image)
from vision_ensemble.evaluation.teacher import teacher_probabilities
from vision_ensemble.hub import HubError, default_repo_id, member_card, push_folder
from vision_ensemble.model import Member, ModelError, create_model, export_model
from vision_ensemble.plots import plot_training_curves
from vision_ensemble.training.batch_size import OutOfMemory, fit_batch_size
from vision_ensemble.training.distill import Distillation
from vision_ensemble.training.distributed import (DistributedError, check_launch, checkpoint_dirs, choose_layout,
                                                  cpu_threads, is_writer, resume_dir, save_checkpoint)
from vision_ensemble.training.finetuning import (create_optimizer, freeze, keep_frozen_norms_in_eval, native_bf16,
                                                 resolve_mixed_precision, scaled_lr)
from vision_ensemble.training.imbalance import WeightedSoftTargetCrossEntropy, balanced_class_weights
from vision_ensemble.training.lookahead import Lookahead
from vision_ensemble.training.time_budget import TimeBudget, cosine_schedule, undecided_horizon
from vision_ensemble.training.tracking import (TrackingError, end_failed_runs, log_run_files, require_trackers,
                                               start_trackers)

CHECK_EVERY = 50  # steps between loss finiteness checks (each one synchronises the device)


class NonFiniteLoss(RuntimeError):
    pass


class RunState:
    """Loop counters saved in every checkpoint beside model, optimizer, scheduler, EMA and RNG states."""

    def __init__(self):
        self.epoch, self.num_updates, self.best_top1 = 0, 0, -1.0
        self.epochs = None  # the run's length when --time-limit chose it
        self.epochs_plans = []  # --time-limit: [epochs done, schedule length] at the start, decision and re-plans

    def state_dict(self):
        return dict(epoch=self.epoch, num_updates=self.num_updates, best_top1=self.best_top1, epochs=self.epochs,
                    epochs_plans=self.epochs_plans)

    def load_state_dict(self, state):
        self.epoch, self.num_updates, self.best_top1 = state["epoch"], state["num_updates"], state["best_top1"]
        self.epochs, self.epochs_plans = state.get("epochs"), state.get("epochs_plans", [])


@torch.no_grad()
def evaluate(model, loader, transform, accelerator) -> dict:
    """Val loss, top-1, top-5; `gather_for_metrics` drops the samples Accelerate duplicated to even out shards."""
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    for images, labels in loader:
        logits = model(transform(images)).float()
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == labels).sum().item()
        correct5 += (top5 == labels[:, None]).any(dim=1).sum().item()
        count += len(labels)
    return {"val_loss": loss_sum / count, "val_top1": 100 * correct1 / count, "val_top5": 100 * correct5 / count,
            "val_count": count}


def main(argv=None) -> int:
    """The command: `train`, with the errors a person can fix (data, launch, model, loss, memory, trackers)
    printed as one line and exit status 2 instead of a traceback."""
    try:
        return train(argv)
    except (DataError, DistributedError, ModelError, NonFiniteLoss, OutOfMemory, PredictionsError,
            TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        end_failed_runs()  # a tracked run that stopped on an exception ends as FAILED, not RUNNING


def train(argv=None) -> int:
    cfg: TrainConfig = recipe_config(build_parser(__doc__.split("\n\n")[0]).parse_args(argv))
    trackers = require_trackers(cfg.report_to)  # a missing tracker stops here, before any data is decoded
    output_dir = Path(cfg.output_dir)
    on_gpu = torch.cuda.is_available()
    cfg.mixed_precision = resolve_mixed_precision(cfg.mixed_precision, on_gpu)  # training_args.json: what ran
    accelerator = Accelerator(
        cpu=not on_gpu,  # several CPU processes (torchrun, mpirun) train as one gloo run, not as separate runs
        mixed_precision=cfg.mixed_precision,
        log_with=trackers or None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if not on_gpu:
        torch.set_num_threads(cpu_threads(cfg.cpu_threads))
        if cfg.mixed_precision == "bf16" and not native_bf16(on_gpu):
            accelerator.print("warning: --mixed-precision bf16 on a CPU without native bf16 kernels (AVX-512 BF16, "
                              "AMX) is emulated, ~12x slower than fp32; bf16-if-native would use fp32 here")
    set_seed(cfg.seed)
    print_main = accelerator.print
    check_launch(accelerator)
    shared_output = choose_layout(accelerator, output_dir)

    # --- data: decoded once per cache folder (under a file lock) into a memory-mapped cache, then kept on the
    # device or gathered from the memory map batch by batch ------------------------------------------------------
    pretrained_cfg = get_pretrained_cfg(cfg.model, allow_unregistered=True)  # the model's own input size
    cache_size = cfg.cache_size or default_cache_size(
        cfg.img_size or (pretrained_cfg.input_size[-1] if pretrained_cfg else 224),
        pretrained_cfg.crop_pct if pretrained_cfg else DEFAULT_CROP_PCT)
    # No barrier around it: the processes that do not build wait on the cache's lock, not in a collective whose
    # timeout (NCCL: 10 minutes) a long first decode would exceed.
    data = load_dataset(cfg.data_dir, cfg.cache_dir, cfg.val_size, cfg.split_seed, cache_size)
    checked = cfg.data_check or cfg.strict_data  # under a file lock: one process checks, the rest read its report
    data_report, report_dir = check_cache(cfg.data_dir, data.cache_dir, cache_size) if checked else (None, None)
    if data_report is not None:
        print_main("\n".join(summary_lines(data_report, short=True)))
        print_main(f"(full data check: {report_dir / 'datacheck.html'})")
        leaked = leakage(data_report)
        if cfg.strict_data and leaked:
            raise DataError(f"the same images are in two splits ({sum(leaked.values())} duplicate pairs across "
                            f"{', '.join(leaked)}; see {report_dir / 'datacheck.html'}): remove them, or train "
                            "without --strict-data")
    train_subset = subset_indices(len(data.train), cfg.max_train_samples, cfg.seed)
    val_subset = subset_indices(len(data.val), cfg.max_eval_samples, cfg.split_seed)  # as evaluate.py picks
    train_arrays = data.train if train_subset is None else data.train.subset(train_subset)
    val_arrays = data.val if val_subset is None else data.val.subset(val_subset)
    num_classes = len(data.class_names)
    counts = np.bincount(train_arrays.labels, minlength=num_classes)
    cfg.train_class_counts = dict(zip(data.class_names, counts.tolist()))  # the card says when they are imbalanced
    teacher_probs = None
    if cfg.teacher:  # the ensemble's soft targets for these training images, computed (and cached) by the main process
        with accelerator.main_process_first():
            teacher_probs = teacher_probabilities(
                cfg.teacher, data, np.arange(len(data.train)) if train_subset is None else train_subset,
                output_dir / "teacher_targets.npz", accelerator.device, cfg.batch_size * 2)

    # --- model, what of it trains, and its preprocessing -------------------------------------------------------
    # Resolved here so training_args.json records the augmentation that ran; it also sets the eval geometry
    # (photo: the model's own crop_pct; cifar: the whole image).
    cfg.augment = choose_augment(cfg.augment, min(train_arrays.image_shape[:2]))
    model, data_config = create_model(cfg, num_classes)
    try:
        frozen = freeze(model, cfg.freeze)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_augment = train_transform(cfg, data_config, len(train_arrays))
    eval_transform = BatchTransform.from_data_config(data_config, channels_last=cfg.channels_last)
    if hasattr(model, "init_whitening") and not (cfg.pretrained or cfg.pretrained_path or cfg.resume):
        # airbench's data-dependent stem: the 2x2 patch covariance of a seeded sample of the training images
        sample = np.sort(np.random.default_rng(cfg.seed).permutation(len(train_arrays))[:WHITENING_IMAGES])
        model.init_whitening(eval_transform(torch.from_numpy(train_arrays.gather(sample)).permute(0, 3, 1, 2)))

    # MixUp/CutMix pair samples within a batch, so train batches have a fixed, even size.
    batch_size = min(cfg.batch_size, len(train_arrays) // accelerator.num_processes) // 2 * 2
    # One training and one evaluation step before the data takes device memory: --batch-size auto halves the batch
    # until they fit; a fixed batch that does not fit stops here, saying what to try.
    batch_size = fit_batch_size(batch_size, cfg, model, train_augment, eval_transform, train_arrays.image_shape,
                                num_classes, accelerator)
    if cfg.batch_size_auto:
        cfg.batch_size = batch_size
    nbytes = train_arrays.nbytes + val_arrays.nbytes
    data_mode = cfg.data_mode if cfg.data_mode != "auto" else (
        "device" if fits_on_device(nbytes, accelerator.device) else "stream")
    sampler = BalancedSampler(train_arrays.labels, cfg.seed) if cfg.sampler == "balanced" else None
    with_indices = bool(cfg.teacher) or cfg.alternating_flip  # a student's targets and alternating flips look them up
    if data_mode == "device":
        train_loader = device_loader(DeviceImageDataset(train_arrays, accelerator.device, with_indices=with_indices),
                                     batch_size, shuffle=True, drop_last=True, seed=cfg.seed, sampler=sampler)
        val_loader = device_loader(DeviceImageDataset(val_arrays, accelerator.device), cfg.batch_size * 2,
                                   shuffle=False)
    else:  # no decoding here: workers read whole batches from the memory-mapped cache
        train_loader = stream_loader(train_arrays, batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
                                     num_workers=cfg.num_workers, with_indices=with_indices, sampler=sampler)
        val_loader = stream_loader(val_arrays, cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)

    # --- optimisation: timm's --opt (AdamW unless the recipe says) at a rate scaled to the global batch, -------
    # warmup + cosine per step,
    # MixUp/CutMix + label smoothing, EMA
    cfg.global_batch_size = batch_size * accelerator.num_processes
    cfg.effective_lr, cfg.lr_scale = scaled_lr(cfg.lr, cfg.global_batch_size, cfg.lr_base_size, cfg.lr_scale,
                                                cfg.opt)
    try:
        optimizer = create_optimizer(model, cfg, cfg.effective_lr)
    except ValueError as exc:  # an unknown --opt, or options that contradict each other
        raise ModelError(str(exc)) from None
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = len(train_loader)
    # Under --time-limit the warmup of a long schedule runs until the count is decided (as --epochs N would run it).
    scheduler, warmup_epochs = cosine_schedule(optimizer, cfg, steps_per_epoch,
                                               undecided_horizon(cfg) if cfg.time_limit is not None else None)
    mixup = None
    if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=num_classes)
    train_loss_fn = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(cfg.label_smoothing)
    if cfg.class_weights == "balanced":  # MixUp targets arrive smoothed; hard labels are smoothed by the loss
        train_loss_fn = WeightedSoftTargetCrossEntropy(balanced_class_weights(train_arrays.labels, num_classes),
                                                       0.0 if mixup else cfg.label_smoothing).to(accelerator.device)
    distillation = None
    if teacher_probs is not None:  # its own MixUp/CutMix mixes the teacher's targets as it mixes the images
        distillation = Distillation(torch.from_numpy(teacher_probs).to(accelerator.device), cfg, num_classes)
        mixup, train_loss_fn = distillation.mix, distillation.loss
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay) if cfg.ema else None
    lookahead = Lookahead(accelerator.unwrap_model(model)) if cfg.lookahead else None
    if cfg.compile:
        torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)  # recompile chatter drowns the log
        model = torch.compile(model)

    state = RunState()
    accelerator.register_for_checkpointing(scheduler, state)
    for extra in (ema, lookahead):
        if extra is not None:
            accelerator.register_for_checkpointing(extra)
    if cfg.resume:
        checkpoint = resume_dir(accelerator, output_dir, cfg.resume)
        accelerator.load_state(str(checkpoint))
        cfg.epochs = state.epochs or cfg.epochs  # the count --time-limit chose (the schedule's horizon is restored)
        print_main(f"resumed from {checkpoint} (epoch {state.epoch}, best val top-1 {state.best_top1:.2f})")
    if cfg.time_limit is not None:  # one list: what fix_epochs appends is checkpointed and in training_args.json
        state.epochs_plans = state.epochs_plans or [[0, undecided_horizon(cfg)]]
        cfg.epochs_plans = state.epochs_plans

    metrics_file = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        (output_dir / "training_args.json").write_text(json.dumps(asdict(cfg), indent=2))
        history = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
        metrics_file.write_text("".join(json.dumps(m) + "\n" for m in history if m["epoch"] <= state.epoch))
    start_trackers(accelerator, cfg, output_dir)
    print_main(f"{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, input "
               f"{data_config['input_size']}, {len(train_arrays)} train / {len(val_arrays)} val images, "
               f"data on {data_mode}, {accelerator.num_processes} process(es), "
               f"{'fp32' if cfg.mixed_precision == 'no' else cfg.mixed_precision} precision"
               + ("" if accelerator.num_processes == 1 else ", run folder " + (
                   "shared by the nodes" if shared_output else "on each node (checkpoints saved on each)")))
    print_main(f"augment {cfg.augment}, eval crop_pct {data_config['crop_pct']}; freeze {cfg.freeze} "
               f"({len(frozen)} frozen tensors); lr {cfg.effective_lr:.3g} = {cfg.lr:g} at batch {cfg.lr_base_size} "
               f"scaled ({cfg.lr_scale}) to the global batch {cfg.global_batch_size}"
               + (f", layer decay {cfg.layer_decay}" if cfg.layer_decay is not None else "")
               + (f"; warmup capped at {warmup_epochs:g} epoch(s)" if warmup_epochs < cfg.warmup_epochs else ""))

    # --- the loop ---------------------------------------------------------------------------------------------
    # --time-limit: the first epoch measures the speed, then the run's length and the schedule's horizon are fixed.
    # The predictions after the loop are timed (TimeBudget) as they will run: the exported best/ model in fp32
    # (the loop evaluates under autocast, 3x faster in bf16 on the CPU). Before the first export (a decision in a
    # long first epoch), the network as it trains stands in for it.
    def time_prediction() -> float:
        if not accelerator.is_main_process:  # only the main process predicts; its count is the one that runs
            return 0.0
        sample = torch.from_numpy(val_arrays.gather(np.arange(min(len(val_arrays), 512)))).permute(0, 3, 1, 2)
        if (output_dir / "best").is_dir():
            # Building the network draws its initial weights from the RNG that augmentation draws from next: the
            # draws are given back, so that a timed run trains as `--epochs N` does.
            with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
                exported = Member.load(str(output_dir / "best"), device=accelerator.device)
            return seconds_per_predicted_image(exported, sample, cfg.batch_size * 2)
        try:
            live = Member("training", accelerator.unwrap_model(model).eval(), data_config, data.class_names)
            live.transform.channels_last = cfg.channels_last
            return seconds_per_predicted_image(live, sample, cfg.batch_size * 2)
        finally:
            keep_frozen_norms_in_eval(model.train())

    budget = None
    if cfg.time_limit is not None and state.epochs is None:  # a resumed run keeps the count it chose
        budget = TimeBudget(cfg.time_limit, accelerator, steps_per_epoch, len(val_loader),
                            prediction_images(data, cfg, len(train_arrays)), time_prediction)

    def fix_epochs(epochs: int) -> None:
        cfg.epochs = state.epochs = epochs
        state.epochs_plans.append([state.epoch, epochs])
        scheduler.load_state_dict(cosine_schedule(optimizer, cfg, steps_per_epoch)[0].state_dict())
        scheduler.step_update(num_updates=state.num_updates)
        if accelerator.is_main_process:
            (output_dir / "training_args.json").write_text(json.dumps(asdict(cfg), indent=2))
        print_main(budget.describe())

    epoch, paused = state.epoch, False
    while epoch < cfg.epochs:
        epoch += 1
        keep_frozen_norms_in_eval(model.train())
        train_loader.set_epoch(epoch)
        running_loss = torch.zeros((), device=accelerator.device)
        last_checked, start = 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not accelerator.is_local_main_process,
                   leave=False)
        for step, (images, labels, *indices) in enumerate(bar, 1):  # indices: with --teacher, --alternating-flip
            inputs = train_augment(images, *indices, epoch=epoch)
            targets = labels
            if mixup is not None:
                inputs, targets = mixup(inputs, labels, *indices) if distillation is not None else mixup(inputs, labels)
            loss = train_loss_fn(model(inputs), targets)
            if cfg.fail_at_epoch == epoch:
                loss = loss * float("nan")
            accelerator.backward(loss)
            if cfg.clip_grad is not None:
                accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.num_updates += 1
            scheduler.step_update(num_updates=state.num_updates)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=state.num_updates)
            if lookahead is not None:  # over the schedule's own counts (a re-plan moves them)
                lookahead.step(state.num_updates, scheduler.t_initial, scheduler.warmup_t)
            if budget is not None and (epochs := budget.after_step(step)):  # a first epoch longer than the probe
                fix_epochs(epochs)
            running_loss += loss.detach()
            if step % CHECK_EVERY == 0 or step == steps_per_epoch:
                total = accelerator.reduce(running_loss, reduction="mean").item()
                if not math.isfinite(total):
                    good = checkpoint_dirs(output_dir)
                    raise NonFiniteLoss(
                        f"loss became {total} in epoch {epoch} (steps {last_checked + 1}-{step}); stopped. "
                        f"Last good checkpoint: {good[-1] if good else 'none (failed in the first epoch)'}. "
                        "Lower --lr or set --clip-grad, then continue with --resume latest.")
                last_checked = step
                bar.set_postfix(loss=f"{total / step:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        accelerator.wait_for_everyone()
        epoch_time = time.perf_counter() - start
        train_loss = total / steps_per_epoch  # the check at the epoch's last step already reduced the sum

        eval_model, eval_start = ema.module if ema is not None else model, time.perf_counter()
        metrics = {"epoch": epoch, "train_loss": train_loss, **evaluate(eval_model, val_loader, eval_transform, accelerator),
                   "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time,
                   "train_images_per_s": steps_per_epoch * batch_size * accelerator.num_processes / epoch_time,
                   "eval_time_s": time.perf_counter() - eval_start}
        if torch.cuda.is_available():
            metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        accelerator.log(metrics, step=epoch)
        print_main(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))

        is_best = metrics["val_top1"] > state.best_top1
        state.epoch = epoch
        if is_best:
            state.best_top1 = metrics["val_top1"]
        if accelerator.is_main_process:
            with metrics_file.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        export_start = time.perf_counter()
        if is_best and is_writer(accelerator):  # the folder that gets pushed: weights, config, metrics, args, card
            export_model(accelerator.unwrap_model(eval_model, keep_torch_compile=False),
                         output_dir / "best", data_config, data.class_names,
                         {"metrics.json": metrics, "training_args.json": asdict(cfg),
                          "README.md": member_card(cfg.model, metrics, asdict(cfg), data.class_names)},
                         dtype=torch.float16 if cfg.teacher else torch.float32)  # a student ships in fp16
        export_s = time.perf_counter() - export_start
        save_checkpoint(accelerator, output_dir, epoch)
        if budget is not None and (epochs := budget.after_epoch(epoch, export_s)):
            fix_epochs(epochs)
            save_checkpoint(accelerator, output_dir, epoch)  # again, so that it holds the count and the horizon
        elif budget is not None and budget.out_of_time(epoch):
            print_main(f"--time-limit: stopping after epoch {epoch} of {cfg.epochs}, the schedule cut short: the "
                       "epochs ran slower than the first one measured")
            break
        paused = cfg.stop_after_epoch == epoch and epoch < cfg.epochs
        if paused:
            print_main(f"stopping after epoch {epoch} of {cfg.epochs} (--stop-after-epoch): continue with the same "
                       "arguments and --resume latest")
            break

    accelerator.end_training()
    if accelerator.is_main_process:
        plot_training_curves(metrics_file, output_dir / "training_curves.png")
        log_run_files(accelerator, output_dir)
        print_main(f"best val top-1 {state.best_top1:.2f}%; model folder: {output_dir / 'best'}")
        if paused:  # not finished: the predictions and the push are the finished run's
            return 0
        repo_id = cfg.hub_repo_id or default_repo_id(cfg.model, cfg.data_dir) + ("-student" if cfg.teacher else "")
        # The best epoch's val/test probabilities, small enough to bring back instead of the weights.
        predictions = save_predictions(output_dir / "predictions.npz", output_dir / "best", data, cfg, repo_id,
                                       accelerator.device, cfg.batch_size * 2)
        print_main(f"val/test probabilities (with and without flip TTA): {predictions}" if predictions else
                   "no test/ split in the data: no predictions.npz written")
        if cfg.push_to_hub:
            try:
                url = push_folder(output_dir / "best", repo_id, private=cfg.hub_private)
                print_main(f"pushed to {url}")
            except HubError as exc:
                print_main(f"not pushed: {exc}. The model folder is saved at {output_dir / 'best'}; push it later "
                           f"with: hf upload {repo_id} {output_dir / 'best'} .")
    return 0


if __name__ == "__main__":
    sys.exit(main())
