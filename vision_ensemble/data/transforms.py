"""`BatchTransform`: crop, flip, resize and normalisation of a uint8 batch wherever it lives.  Its eval
form, built from a model's saved config, is the preprocessing of training, evaluation and the app alike."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "area": "area"}


class BatchTransform:
    """uint8 NCHW batch -> normalised float NCHW model input, on whatever device the batch is on.

    Train: random crop from a reflection-padded image and a random horizontal flip, at the source
    resolution (cheap), then the shared resize + normalise.  Eval: resize + normalise only.  The resize
    follows timm's eval geometry: shorter side to size / crop_pct, centre crop to size.
    """

    def __init__(self, input_size: tuple[int, int, int], mean, std, interpolation: str = "bilinear",
                 crop_pct: float = 1.0, train: bool = False, crop_padding: int = 4, hflip: bool = True,
                 channels_last: bool = False):
        self.size = tuple(int(s) for s in input_size[-2:])
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.interpolation = _INTERPOLATION.get(interpolation, "bilinear")
        self.crop_pct = float(crop_pct or 1.0)
        self.train, self.crop_padding, self.hflip = train, crop_padding if train else 0, hflip and train
        self.channels_last = channels_last

    @classmethod
    def from_data_config(cls, data_config: dict, **kwargs) -> "BatchTransform":
        return cls(data_config["input_size"], data_config["mean"], data_config["std"],
                   data_config.get("interpolation", "bilinear"), data_config.get("crop_pct", 1.0), **kwargs)

    def random_crop(self, images: torch.Tensor) -> torch.Tensor:
        pad = self.crop_padding
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        rows = (torch.arange(h, device=images.device).view(1, h, 1) + dy).expand(n, h, w)
        cols = (torch.arange(w, device=images.device).view(1, 1, w) + dx).expand(n, h, w)
        batch = torch.arange(n, device=images.device).view(n, 1, 1).expand(n, h, w)
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)

    def random_flip(self, images: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        h, w = (int(s) for s in images.shape[-2:])  # plain ints also while an ONNX export traces a fixed size
        th, tw = self.size
        scale = max(th, tw) / self.crop_pct / min(h, w)
        rh, rw = (th, tw) if (h, w) == (th, tw) and self.crop_pct == 1.0 else (
            max(th, round(h * scale)), max(tw, round(w * scale)))
        if rh * rw > 16 * th * tw:
            # An extreme aspect ratio (a 10,000x10 banner) would make the resized image enormous: cut the
            # source to the part the centre crop keeps, plus a margin for the interpolation kernel, first.
            keep_h, keep_w = min(h, math.ceil(th / scale) + 4), min(w, math.ceil(tw / scale) + 4)
            top, left = (h - keep_h) // 2, (w - keep_w) // 2
            images = images[..., top:top + keep_h, left:left + keep_w]
            h, w = keep_h, keep_w
            rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (rh, rw) != (h, w):
            kwargs = {}
            if self.interpolation in ("bilinear", "bicubic"):
                # Antialiasing only changes downscaling; its kernel is slower, so upscaling skips it.
                kwargs = {"align_corners": False, "antialias": rh < h or rw < w}
            images = F.interpolate(images, size=(rh, rw), mode=self.interpolation, **kwargs).clamp_(0, 255)
        top, left = (rh - th) // 2, (rw - tw) // 2
        return images[..., top:top + th, left:left + tw]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.crop_padding:
            x = self.random_crop(x)
        if self.hflip:
            x = self.random_flip(x)
        x = self.resize(x)
        if self.mean.device != x.device:  # moved once, not per batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
