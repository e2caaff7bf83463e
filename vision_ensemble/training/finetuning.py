"""Fine-tuning strategies: what trains (`--freeze`), at which rate (`--lr` scaled to the global batch,
`--layer-decay`), and BatchNorm layers that stay frozen while the rest of the model trains.

Stages are timm's own coarse parameter groups (`model.group_matcher(coarse=True)` through
`timm.models.group_parameters`): the stem, then one group per stage (ResNet layer1-4, EfficientNet
blocks.0-6 with conv_head, ViT one group per block with the final norm), then the head.
"""

from __future__ import annotations

import functools
import math

import timm.optim.muon
import torch
from timm.models import group_parameters
from timm.optim import create_optimizer_v2

from ..config import TrainConfig


def native_bf16(on_gpu: bool) -> bool:
    """Whether bf16 runs at full speed here: on a GPU, and on a CPU whose instructions oneDNN has bf16 kernels for
    (AVX-512 BF16, AMX).  Without them bf16 is emulated: airbench_s's training step took 123 s in bf16 against 10 s
    in fp32 on an AVX2-only AMD EPYC (BENCHMARKS.md)."""
    if on_gpu:
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_mixed_precision(value: str | None, on_gpu: bool) -> str:
    """--mixed-precision as Accelerate takes it: the default is bf16 on a GPU and no on a CPU; bf16-if-native
    (the CPU recipes') is bf16 where `native_bf16`, else no."""
    if value is None:
        return "bf16" if on_gpu else "no"
    if value == "bf16-if-native":
        return "bf16" if native_bf16(on_gpu) else "no"
    return value


def scaled_lr(lr: float, global_batch_size: int, lr_base_size: int, rule: str, optimizer: str = "adamw") -> tuple[float, str]:
    """timm train.py's rule: lr * ratio, ratio = global batch / base batch, square-rooted for Adam-family
    (and LAMB) optimizers under 'auto'.  Returns the rate and the rule used."""
    if rule == "auto":
        rule = "sqrt" if any(name in optimizer.lower() for name in ("ada", "lamb")) else "linear"
    ratio = global_batch_size / lr_base_size
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]
    return lr * factor, rule


def stage_groups(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names per coarse group, input to output; the last group is the head (classifier and neck)."""
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"{type(model).__name__} has no timm group_matcher(): use --freeze none or backbone")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [groups[i] for i in sorted(groups)]


def freeze(model: torch.nn.Module, spec: str) -> list[str]:
    """Apply `--freeze` (none | backbone | stages:N) in place: requires_grad False outside the trained part.

    Returns the names of the frozen parameters.  `backbone` trains only `model.get_classifier()` (a linear
    probe); `stages:N` trains the last N stages and the head.
    """
    if spec == "none":
        return []
    if spec == "backbone":
        trained = {id(p) for p in model.get_classifier().parameters()}
        frozen = [name for name, p in model.named_parameters() if id(p) not in trained]
    else:
        num_stages = int(spec.split(":", 1)[1])
        groups = stage_groups(model)
        if num_stages >= len(groups) - 1:
            raise ValueError(f"--freeze {spec}: {type(model).__name__} has {len(groups) - 1} groups below its head "
                             f"(stem and stages); use stages:1-{len(groups) - 2}, or none to train everything")
        frozen = [name for group in groups[:len(groups) - 1 - num_stages] for name in group]
    parameters = dict(model.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen


def keep_frozen_norms_in_eval(model: torch.nn.Module) -> torch.nn.Module:
    """Call after `model.train()`: BatchNorm layers whose parameters are all frozen go back to eval mode, so
    they normalise with their (pretrained) running statistics and do not update them."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def norm_bias_groups(model: torch.nn.Module, weight_decay: float, lr_scale: float) -> list[dict]:
    """timm's weight-decay groups (none on biases and 1-d parameters) with the normalisation layers' biases in a
    third group trained at `lr_scale` times the rate (`lr_scale` is applied by timm's schedulers)."""
    norm_biases = {id(m.bias) for m in model.modules()
                   if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm))
                   and m.bias is not None}
    groups = {"decay": [], "no_decay": [], "norm_bias": []}
    for p in model.parameters():
        if p.requires_grad:
            groups["norm_bias" if id(p) in norm_biases else "decay" if p.ndim > 1 else "no_decay"].append(p)
    return [dict(params=groups["decay"], weight_decay=weight_decay), dict(params=groups["no_decay"], weight_decay=0.0),
            dict(params=groups["norm_bias"], weight_decay=0.0, lr_scale=lr_scale)]


def create_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm's `--opt` over the trainable parameters only (timm's param-group helpers skip requires_grad=False),
    with per-group `lr_scale` under `--layer-decay` or `--norm-bias-lr-scale` (applied by timm's schedulers)."""
    params = model
    if cfg.norm_bias_lr_scale != 1:
        if cfg.layer_decay is not None:
            raise ValueError("--layer-decay and --norm-bias-lr-scale each set per-group rates: choose one")
        params = norm_bias_groups(model, cfg.weight_decay, cfg.norm_bias_lr_scale)
    optimizer = create_optimizer_v2(params, cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                    layer_decay=cfg.layer_decay)
    # (train/finetune.py trains on the GPU when there is one; the model is not on its device yet)
    if isinstance(optimizer, timm.optim.muon.Muon) and not native_bf16(on_gpu=torch.cuda.is_available()):
        newton_schulz_in_fp32()
    return optimizer


def newton_schulz_in_fp32() -> None:
    """Make timm's Muon orthogonalise its updates (Newton-Schulz) in fp32 instead of bf16, for this process.

    timm fixes bf16, which a CPU without native bf16 kernels emulates: the orthogonalisation of airbench_s's
    weights took 4.3 s a step in bf16 against 0.07 s in fp32 on 2 AMD EPYC (AVX2) cores, beside a 9 s training
    step (BENCHMARKS.md).  fp32 is the more exact of the two, so only speed changes."""
    orthogonalise = timm.optim.muon.zeropower_via_newtonschulz
    if not isinstance(orthogonalise, functools.partial):  # the module's function, looked up at each step
        timm.optim.muon.zeropower_via_newtonschulz = functools.partial(orthogonalise, dtype=torch.float32)
