"""A fast small-image network family, registered with timm: airbench's CIFAR-10 network (Keller Jordan,
"94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024), made a timm model.

`import vision_ensemble` registers the names, after which `timm.create_model("airbench_s")`, an exported folder
(`local-dir:`) and a Hub repo (`hf-hub:`) all build it through timm's factory like any backbone, so training,
export in timm's format, evaluation, the Space and ONNX export need no special case.

The network, 32 px in:
- a 2x2 patch-whitening convolution (24 channels: the 12 eigenvectors of the training images' 2x2 patch
  covariance and their negatives, scaled by 1/sqrt(eigenvalue)), its weights fixed, set from data by
  `init_whitening` before training; GELU;
- three groups of conv3x3 -> maxpool2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU (31 -> 15 -> 7 -> 3 px);
  airbench96's groups add a third conv3x3 -> BatchNorm and a residual over the last two, before the last GELU;
  every conv starts as an identity on its first input channels (dirac init: an implicit residual);
  BatchNorm without a scale (weight fixed at 1), eps 1e-12, momentum 0.4 (airbench94's 0.6 in its convention;
  airbench96 keeps PyTorch's 0.1);
- a global max pool and a bias-free linear classifier whose logits are scaled by 1/9.

Variants differ in width: `airbench_s` is airbench94's (64, 256, 256), `airbench95` airbench95's (128, 384, 384),
`airbench_m` (96, 384, 384) and `airbench_l` (128, 512, 512); any other as `widths=[a, b, c]`. `airbench96` is
airbench96's network (its 2024-06 version): `airbench_l`'s widths with three convs a group (`residual=True`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..config import AIRBENCH_MODELS

__all__ = ["AirbenchNet"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
WHITENING_EPS = 5e-4  # added to the patch covariance's eigenvalues before the 1/sqrt scaling (airbench's)


class ScalelessBatchNorm(nn.BatchNorm2d):
    """BatchNorm with its scale fixed at 1 (only the bias trains), as airbench: the following conv's weight
    carries the scale, and one fewer parameter per channel trains faster."""

    def __init__(self, num_features: int, momentum: float, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv -> pool -> norm -> GELU -> conv -> norm -> GELU; with `residual`, airbench96's group: a third conv ->
    norm, and the output of the first GELU added back before the last one."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool, norm_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ScalelessBatchNorm(out_channels, momentum=norm_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = ScalelessBatchNorm(out_channels, momentum=norm_momentum)
        self.residual = residual
        if residual:
            self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
            self.norm3 = ScalelessBatchNorm(out_channels, momentum=norm_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        if not self.residual:
            return self.act(self.norm2(self.conv2(x)))
        return self.act(x + self.norm3(self.conv3(self.act(self.norm2(self.conv2(x))))))


class AirbenchNet(nn.Module):
    """airbench's CIFAR network with timm's model interface (classifier reset, feature/head split, stage groups
    for `--freeze`)."""

    def __init__(self, widths=(64, 256, 256), num_classes: int = 10, in_chans: int = 3, whiten_kernel: int = 2,
                 logit_scale: float = 1 / 9, global_pool: str = "max", drop_rate: float = 0.0, residual: bool = False,
                 norm_momentum: float = 0.4, **_):
        super().__init__()
        self.num_classes, self.drop_rate, self.logit_scale = num_classes, drop_rate, logit_scale
        whiten_width = 2 * in_chans * whiten_kernel ** 2
        self.stem = nn.Conv2d(in_chans, whiten_width, whiten_kernel, padding=0, bias=True)
        self.stem.weight.requires_grad_(False)  # set from the data by init_whitening, then fixed
        nn.init.zeros_(self.stem.bias)  # the whitened patches start centred on what the covariance saw
        self.stem_act = nn.GELU()
        channels = [whiten_width, *widths]
        self.stages = nn.Sequential(*(ConvGroup(c_in, c_out, residual, norm_momentum)
                                      for c_in, c_out in zip(channels, channels[1:])))
        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = nn.Linear(self.num_features, num_classes, bias=False) if num_classes else nn.Identity()
        self.feature_info = [dict(num_chs=c, reduction=2 ** (i + 1), module=f"stages.{i}") for i, c in enumerate(widths)]
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not self.stem:
                # Identity on the first in_channels outputs: each conv starts as an implicit residual.
                nn.init.dirac_(module.weight.data[:module.weight.size(1)])

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the stem to whiten the 2x2 patches of `images` (normalised float NCHW training images; airbench
        uses 5,000): weights = eigenvectors of the patch covariance / sqrt(eigenvalue + eps), and their negatives."""
        weight = self.stem.weight
        c, (h, w) = images.shape[1], weight.shape[2:]
        patches = images.float().unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
        scaled = eigenvectors / torch.sqrt(eigenvalues + WHITENING_EPS).view(-1, 1, 1, 1)
        weight.copy_(torch.cat((scaled, -scaled)).to(weight.dtype))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(conv|norm)(\d+)")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = nn.Linear(self.num_features, num_classes, bias=False) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem_act(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return dict(num_classes=10, input_size=(3, 32, 32), pool_size=(3, 3), crop_pct=1.0, interpolation="bilinear",
                mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv="stem", classifier="head", license="apache-2.0",
                **kwargs)


default_cfgs = generate_default_cfgs({name: _cfg() for name in AIRBENCH_MODELS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> AirbenchNet:
    return build_model_with_cfg(AirbenchNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs)


@register_model
def airbench_s(pretrained: bool = False, **kwargs) -> AirbenchNet:
    """airbench94's network: widths 64/256/256, 1.97M parameters."""
    return _create("airbench_s", pretrained, **{"widths": (64, 256, 256), **kwargs})


@register_model
def airbench95(pretrained: bool = False, **kwargs) -> AirbenchNet:
    """airbench95's network: widths 128/384/384, 4.61M parameters (2.35x airbench_s's time a training step on a
    2-core CPU)."""
    return _create("airbench95", pretrained, **{"widths": (128, 384, 384), **kwargs})


@register_model
def airbench96(pretrained: bool = False, **kwargs) -> AirbenchNet:
    """airbench96's network (2024-06): widths 128/512/512, three convs a group with a residual over the last two,
    BatchNorm momentum 0.1; 12.7M parameters."""
    return _create("airbench96", pretrained, **{"widths": (128, 512, 512), "residual": True, "norm_momentum": 0.1,
                                                **kwargs})


@register_model
def airbench_m(pretrained: bool = False, **kwargs) -> AirbenchNet:
    """Widths 96/384/384."""
    return _create("airbench_m", pretrained, **{"widths": (96, 384, 384), **kwargs})


@register_model
def airbench_l(pretrained: bool = False, **kwargs) -> AirbenchNet:
    """Widths 128/512/512."""
    return _create("airbench_l", pretrained, **{"widths": (128, 512, 512), **kwargs})
