"""Train-step throughput (images/s) of a backbone through three input paths, in one run:

1. ceiling: synthetic batches already on the device (the model alone limits speed);
2. this project's pipeline: decoded uint8 images on the device -> batched crop/flip/resize/normalise ->
   MixUp/CutMix (timm `Mixup`), exactly as train/finetune.py does;
3. the standard pipeline: torchvision ImageFolder + CPU transforms + DataLoader workers.

Same model, resolution, batch, precision (bf16 autocast on GPU, and on CPU where the recipe asks for it and the
CPU has native bf16 kernels),
channels_last, the recipe's optimizer step and MixUp/CutMix (none where the recipe has none); resolution, batch size
and model arguments default to the model's training recipe (vision_ensemble/config.py).

    python benchmarks/train_throughput.py --model seresnet50            # its recipe: 64 px, batch 512
    python benchmarks/train_throughput.py --model vit_small_patch16_224 --compile
    python benchmarks/train_throughput.py --model seresnet50 --img-size 224 --batch-size 256
    python benchmarks/train_throughput.py --model efficientnet_b0 --paths ceiling,ours --json out.jsonl  # 1. and 2.
    python benchmarks/train_throughput.py --model seresnet50 efficientnet_b0 --paths ceiling,ours  # one after another
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from vision_ensemble.config import default_cache_size, recipe_config
from vision_ensemble.data import BatchTransform, DeviceImageDataset, device_loader, load_dataset
from vision_ensemble.model import airbench  # noqa: F401 (registers airbench_* with timm)
from vision_ensemble.training.finetuning import create_optimizer, resolve_mixed_precision

from loader_throughput import torchvision_pipeline  # the same baseline pipeline in both benchmarks


def batches_synthetic(batch_size, size, device):
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    while True:
        yield x, y


def batches_device_resident(data, batch_size, device):
    loader = device_loader(DeviceImageDataset(data.train, device), batch_size, shuffle=True, drop_last=True)
    while True:
        yield from loader


def run(model, optimizer, batches, prepare, steps, warmup, device, dtype, recipe) -> float:
    mixup = None
    if recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0:
        mixup = Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
                      label_smoothing=recipe.label_smoothing, num_classes=10)
    loss_fn = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = next(batches)
        x = prepare(x)
        x, target = mixup(x, y) if mixup else (x, y)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - start)


def measure(args, name: str, recipe, data, device: torch.device) -> dict:
    """One model's images/s through each of `args.paths` (and its peak GPU memory), printed as they come."""
    img_size, batch_size, model_kwargs = recipe.img_size or 224, recipe.batch_size, recipe.model_kwargs
    precision = resolve_mixed_precision(recipe.mixed_precision, device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" or precision == "bf16" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = timm.create_model(name, num_classes=10, **model_kwargs).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    cfg = timm.data.resolve_data_config({}, model=model)
    optimizer = create_optimizer(model, recipe, 1e-4)
    if args.compile:  # every path runs the same compiled model; the first warm-up steps compile it
        model = torch.compile(model)
    eval_like = BatchTransform((3, img_size, img_size), cfg["mean"], cfg["std"], channels_last=True)
    train_tf = BatchTransform((3, img_size, img_size), cfg["mean"], cfg["std"], train=True,
                              crop_padding=recipe.crop_padding, channels_last=True)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{name} {model_kwargs or ''} at {img_size} px, batch {batch_size}, {dtype}, {device_name}"
          f"{', torch.compile' if args.compile else ''}")
    paths = {  # name: (batches, preparation on the device, label)
        "ceiling": (lambda: batches_synthetic(batch_size, img_size, device), eval_like,
                    "ceiling (synthetic, on device)"),
        "ours": (lambda: batches_device_resident(data, batch_size, device), train_tf, "device-resident pipeline"),
        "torchvision": (lambda: torchvision_pipeline(data, img_size, batch_size, device, args.workers,
                                                     cfg["mean"], cfg["std"]),
                        lambda x: x.contiguous(memory_format=torch.channels_last),
                        f"torchvision DataLoader ({args.workers} workers)"),
    }
    result = {"model": name, "img_size": img_size, "batch_size": batch_size, "device": device_name,
              "compile": args.compile, "steps": args.steps}
    for path in args.paths.split(","):
        batches, prepare, label = paths[path]
        result[path] = run(model, optimizer, batches(), prepare, args.steps, args.warmup, device, dtype, recipe)
        share = "" if path == "ceiling" or "ceiling" not in result else \
            f" ({100 * result[path] / result['ceiling']:.0f}% of ceiling)"
        print(f"{label + ':':32s} {result[path]:,.0f} img/s{share}")
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory: {result['peak_gpu_memory_gib']:.1f} GiB")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["seresnet50"],
                   help="one or more timm models, measured one after another in this process (one start-up, one "
                        "decoded dataset); one that fails is reported and the next one runs")
    p.add_argument("--model-kwargs", type=json.loads, help="timm.create_model arguments (default: the recipe's)")
    p.add_argument("--img-size", type=int, help="default: the recipe's, else 224")
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compiled before the timings)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--data-dir", default="../shared/data/cifar10.tar.gz")
    p.add_argument("--cache-dir")
    p.add_argument("--cache-size", type=int, help="decoded-cache size (default: as finetune.py picks for --img-size)")
    p.add_argument("--paths", default="ceiling,ours,torchvision", help="which of the three input paths to time")
    p.add_argument("--json", help="append the results as one JSON line per model to this file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    recipes = {name: recipe_config({"model": name, "img_size": args.img_size, "batch_size": args.batch_size,
                                    "model_kwargs": args.model_kwargs}) for name in args.model}
    largest = max(recipe.img_size or 224 for recipe in recipes.values())
    data = load_dataset(args.data_dir, args.cache_dir, cache_size=args.cache_size or default_cache_size(largest))
    failed = []
    for name, recipe in recipes.items():
        try:
            result = measure(args, name, recipe, data, device)
        except Exception as error:  # noqa: BLE001 (an out-of-memory or a model that does not build: say, go on)
            print(f"{name} failed: {type(error).__name__}: {error}", file=sys.stderr)
            failed.append(name)
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next model starts from an empty cache, as in a process of its own
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
