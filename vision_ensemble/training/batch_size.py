"""A batch that fits in memory, checked before the loop: one training step (forward, backward, AdamW step) and one
evaluation step (twice the batch, as the validation loader) on random images of the training shape.  With
`--batch-size auto` Accelerate's `find_executable_batch_size` halves the batch from the recipe's until both fit
(kept even for MixUp's pairs; all ranks take the smallest found); a fixed batch that does not fit stops here with
one line naming the size and what to try.  The probe changes nothing: its optimizer has a zero rate and is
dropped, and the BatchNorm statistics it touched are restored.  Data kept on the device is loaded after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate.utils import find_executable_batch_size
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

from ..config import TrainConfig
from .finetuning import create_optimizer


class OutOfMemory(RuntimeError):
    """A batch size that does not fit, with what to try."""


def advice(batch_size: int, cfg: TrainConfig, device: torch.device) -> str:
    return (f"out of memory at batch size {batch_size} per process ({cfg.model} on {device.type}): try "
            "--batch-size auto (halves it until a step fits), a smaller --batch-size, --data-mode stream (the data "
            "leaves the GPU) or a smaller --img-size")


def fit_batch_size(batch_size: int, cfg: TrainConfig, model, train_augment, eval_transform, image_shape,
                   num_classes: int, accelerator) -> int:
    """`batch_size` if a training and an evaluation step fit (else `OutOfMemory`); with `cfg.batch_size_auto`,
    the largest of batch_size, batch_size / 2, ... that fits, the sizes tried recorded in cfg.batch_size_auto."""
    device = accelerator.device
    model.to(device)
    height, width, channels = image_shape

    def try_step(size: int) -> int:
        if cfg.oom_above_batch is not None and size > cfg.oom_above_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory. (simulated above batch {cfg.oom_above_batch})")
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        optimizer = create_optimizer(model, cfg, 0.0)
        try:
            images = torch.randint(0, 256, (size, channels, height, width), dtype=torch.uint8, device=device)
            labels = torch.randint(0, num_classes, (size,), device=device)
            with accelerator.autocast():
                inputs = train_augment(images, torch.arange(size, device=device))  # dataset indices, for flips
                F.cross_entropy(model.train()(inputs), labels).backward()
            optimizer.step()
            with torch.no_grad(), accelerator.autocast():
                model.eval()(eval_transform(torch.cat([images, images])))
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            model.train()
        return size

    if not cfg.batch_size_auto:
        try:
            return try_step(batch_size)
        except RuntimeError as exc:
            if should_reduce_batch_size(exc):
                raise OutOfMemory(advice(batch_size, cfg, device)) from None
            raise
        finally:  # hand the probe's memory back, so that --data-mode auto sees what is free
            clear_device_cache(garbage_collection=True)

    tried = [batch_size]

    def halve() -> int:  # even sizes only; 0 (after 2) ends the search
        tried.append(tried[-1] // 4 * 2)
        return tried[-1]

    try:
        found = find_executable_batch_size(try_step, starting_batch_size=batch_size, reduce_batch_size_fn=halve)()
    except RuntimeError as exc:
        if "reached zero" not in str(exc):
            raise
        raise OutOfMemory(f"out of memory at every batch size from {batch_size} down to 2 per process ({cfg.model} "
                          f"on {device.type}): try --data-mode stream (the data leaves the GPU) or a smaller "
                          "--img-size") from None
    clear_device_cache(garbage_collection=True)
    found = int(accelerator.gather(torch.tensor([found], device=device)).min().item())  # every rank runs one size
    cfg.batch_size_auto = tried if found == tried[-1] else [*tried, found]
    return found
