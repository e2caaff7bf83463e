"""Batched transforms of uint8 NCHW batches on whatever device they live.

`BatchTransform`: resize + normalise (its eval form, built from a model's saved config, is the preprocessing
of evaluation and the app alike), with CIFAR's training augmentation (reflect-pad crop, flip, optional cutout)
as its train form.  `PhotoTrainTransform`: timm's photo fine-tuning augmentation through Kornia, drawn per sample.
`train_transform` picks one for `--augment`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from .sources import DataError


_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "area": "area"}


class BatchTransform:
    """uint8 NCHW batch -> normalised float NCHW model input, on whatever device the batch is on.

    Train: random crop from a reflection-padded image and a random horizontal flip, at the source
    resolution (cheap), then the shared resize + normalise, then cutout (a `cutout`-pixel square per image,
    inside the image, set to 0: the mean colour).  Eval: resize + normalise only.  The resize
    follows timm's eval geometry: shorter side to size / crop_pct, centre crop to size.

    After `alternate_flips`, the flip is airbench's derandomized one: a batch is then called with its images'
    dataset indices and the (1-based) epoch.
    """

    def __init__(self, input_size: tuple[int, int, int], mean, std, interpolation: str = "bilinear",
                 crop_pct: float = 1.0, train: bool = False, crop_padding: int = 4, hflip: bool = True,
                 cutout: int = 0, channels_last: bool = False):
        self.size = tuple(int(s) for s in input_size[-2:])
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.interpolation = _INTERPOLATION.get(interpolation, "bilinear")
        self.crop_pct = float(crop_pct or 1.0)
        self.train, self.crop_padding, self.hflip = train, crop_padding if train else 0, hflip and train
        self.cutout = min(cutout, *self.size) if train else 0
        self.channels_last = channels_last
        self.first_flips: torch.Tensor | None = None  # per dataset image, after alternate_flips

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

    def alternate_flips(self, num_images: int, seed: int) -> None:
        """airbench's alternating flip (Jordan, 2024): each of the dataset's `num_images` images is flipped at random
        (seeded) in the first epoch and the other way round in every epoch after, so that any two consecutive
        epochs show it both ways, where random flips show the same view twice in a row half the time."""
        self.first_flips = torch.rand(num_images, generator=torch.Generator().manual_seed(seed)) < 0.5

    def random_flip(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 1) -> torch.Tensor:
        if self.first_flips is None:
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
        elif indices is None:
            raise ValueError("alternating flips need each image's dataset index (a loader with_indices)")
        else:
            if self.first_flips.device != images.device:
                self.first_flips = self.first_flips.to(images.device)
            flip = self.first_flips[indices.to(images.device)] ^ (epoch % 2 == 0)
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)

    def random_cutout(self, x: torch.Tensor) -> torch.Tensor:
        """Zero one `cutout` x `cutout` square per image, its corner drawn so that it lies inside (airbench96)."""
        n, _, h, w = x.shape
        size = self.cutout
        top = torch.randint(0, h - size + 1, (n, 1, 1), device=x.device)
        left = torch.randint(0, w - size + 1, (n, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        return x.masked_fill(inside.unsqueeze(1), 0.0)

    def resized_shape(self, h: int, w: int) -> tuple[float, int, int]:
        """(scale, height, width) of an h x w image before the centre crop to `size`.

        timm's eval geometry (transforms_imagenet_eval: torchvision Resize + CenterCrop): the shorter side to
        floor(size / crop_pct), the longer one in proportion (truncated), then the centred crop.
        """
        th, tw = self.size
        short = math.floor(max(th, tw) / self.crop_pct)
        rh, rw = (short, int(short * w / h)) if h < w else (int(short * h / w), short)
        return short / min(h, w), rh, rw

    def crop_box(self, h: int, w: int) -> tuple[float, float, float, float]:
        """(top, left, height, width), in an h x w source image's pixels, of the part the model sees."""
        _, rh, rw = self.resized_shape(h, w)
        th, tw = self.size
        return round((rh - th) / 2) * h / rh, round((rw - tw) / 2) * w / rw, th * h / rh, tw * w / rw

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        h, w = (int(s) for s in images.shape[-2:])  # plain ints also while an ONNX export traces a fixed size
        th, tw = self.size
        scale, rh, rw = self.resized_shape(h, w)
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
        top, left = int(round((rh - th) / 2)), int(round((rw - tw) / 2))
        return images[..., top:top + th, left:left + tw]

    def __call__(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 1) -> torch.Tensor:
        x = images.float()
        if self.crop_padding:
            x = self.random_crop(x)
        if self.hflip:
            x = self.random_flip(x, indices, epoch)
        x = self.resize(x)
        if self.mean.device != x.device:  # moved once, not per batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = (x - self.mean) / self.std
        if self.cutout:
            x = self.random_cutout(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


class PhotoTrainTransform(torch.nn.Module):
    """uint8 NCHW batch -> augmented, normalised float NCHW model input; crops, flips, policy magnitudes and
    erased boxes are drawn per sample.

    The order of timm's training transform: geometry (RandomResizedCrop with timm's scale (0.08, 1) and
    ratio (3/4, 4/3), horizontal flip) -> colour/policy (RandAugment or TrivialAugment, on [0, 1] images)
    -> normalise -> RandomErasing (erased boxes become 0, the mean colour).  MixUp/CutMix come after, in
    the training loop.  Kornia picks a policy's operations once per call (their magnitudes and signs per
    image), so the policy runs on groups of `POLICY_GROUP` images: a batch mixes many operations, as timm's
    per-image draw does, without a call per image.
    """

    POLICY_GROUP = 16

    def __init__(self, input_size: tuple[int, int, int], mean, std, interpolation: str = "bilinear",
                 hflip: bool = True, auto_augment: str = "randaugment", magnitude: int = 9,
                 erase_prob: float = 0.25, channels_last: bool = False):
        # Imported here: evaluation and the app use only BatchTransform and need not pay Kornia's import.
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment, TrivialAugment

        super().__init__()
        size = tuple(int(s) for s in input_size[-2:])
        resample = "bicubic" if interpolation == "bicubic" else "bilinear"
        self.crop = K.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), resample=resample,
                                        align_corners=False)
        self.flip = K.RandomHorizontalFlip(p=0.5 if hflip else 0.0)
        self.policy = {"randaugment": lambda: RandAugment(n=2, m=magnitude), "trivialaugment": TrivialAugment,
                       "none": lambda: None}[auto_augment]()
        self.normalize = K.Normalize(torch.tensor(mean), torch.tensor(std))
        self.erase = K.RandomErasing(scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), p=erase_prob) if erase_prob > 0 else None
        self.channels_last = channels_last

    @torch.no_grad()
    def forward(self, images: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 1) -> torch.Tensor:
        """`indices` and `epoch`, which BatchTransform's alternating flips use, are accepted and unused."""
        x = self.flip(self.crop(images.float() / 255.0)).clamp_(0, 1)  # bicubic overshoots
        if self.policy is not None:
            x = torch.cat([self.policy(group) for group in x.split(self.POLICY_GROUP)]).clamp_(0, 1)
        x = self.normalize(x)
        if self.erase is not None:
            x = self.erase(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


#: `--augment auto` uses CIFAR's augmentation for images up to this size (thumbnails), photo's above.
THUMBNAIL_MAX_SIZE = 64


def choose_augment(augment: str, image_size: int) -> str:
    """Resolve `--augment auto` from the shorter side of the cached source images."""
    if augment != "auto":
        return augment
    return "cifar" if image_size <= THUMBNAIL_MAX_SIZE else "photo"


def train_transform(cfg: TrainConfig, data_config: dict, num_images: int):
    """The training transform for `cfg.augment` (cifar or photo, already resolved) at the model's input, for a
    training set of `num_images` images."""
    if cfg.augment == "cifar":
        transform = BatchTransform.from_data_config(data_config, train=True, crop_padding=cfg.crop_padding,
                                                    hflip=cfg.hflip, cutout=cfg.cutout, channels_last=cfg.channels_last)
        if cfg.alternating_flip:
            transform.alternate_flips(num_images, cfg.seed)
        return transform
    if cfg.alternating_flip:
        raise DataError("--alternating-flip is CIFAR augmentation's (--augment cifar, images up to "
                        f"{THUMBNAIL_MAX_SIZE} px under auto); photo augmentation flips at random: drop the option")
    return PhotoTrainTransform(data_config["input_size"], data_config["mean"], data_config["std"],
                               data_config.get("interpolation", "bilinear"), hflip=cfg.hflip,
                               auto_augment=cfg.auto_augment, magnitude=cfg.augment_magnitude,
                               erase_prob=cfg.erase_prob, channels_last=cfg.channels_last)
