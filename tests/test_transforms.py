"""Transforms: the eval geometry against timm's own PIL pipeline, and the photo training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from vision_ensemble.config import recipe_config
from vision_ensemble.data import BatchTransform, DataError, PhotoTrainTransform, choose_augment, train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth RGB image (as photos are): coarse noise upsampled, so resampling kernels agree closely."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
@pytest.mark.parametrize("height,width", [(150, 200), (210, 130)])
def test_eval_transform_matches_timms_pil_transform(interpolation, crop_pct, height, width):
    data_config = {"input_size": (3, 64, 64), "mean": MEAN, "std": STD, "interpolation": interpolation,
                   "crop_pct": crop_pct, "crop_mode": "center"}
    image = smooth_photo(height, width)
    reference = create_transform(**data_config, is_training=False)(image)
    batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    ours = BatchTransform.from_data_config(data_config)(batch)[0]
    assert ours.shape == reference.shape == (3, 64, 64)
    # PIL rounds to uint8 after resizing, torch does not: a level or two of 255, in normalised units.
    torch.testing.assert_close(ours, reference, atol=3 / 255 / min(STD), rtol=0)
    assert (ours - reference).abs().mean() < 0.5 / 255 / min(STD)


def photo_batch(n: int = 8, size: int = 96) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(smooth_photo(size, size, seed=i))).permute(2, 0, 1)
                        for i in range(n)])


@pytest.mark.parametrize("auto_augment", ["randaugment", "trivialaugment", "none"])
def test_photo_transform_gives_normalised_model_input(auto_augment):
    transform = PhotoTrainTransform((3, 64, 64), MEAN, STD, "bicubic", auto_augment=auto_augment, magnitude=9,
                                    erase_prob=0.5, channels_last=True)
    x = transform(photo_batch())
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    low = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    high = ((1 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1)
    assert torch.all(x >= low - 1e-4) and torch.all(x <= high + 1e-4)


def test_photo_crops_are_drawn_per_sample():
    transform = PhotoTrainTransform((3, 32, 32), MEAN, STD, auto_augment="none", erase_prob=0.0, hflip=False)
    same_image = photo_batch(1).expand(16, -1, -1, -1)
    out = transform(same_image)
    boxes = transform.crop._params["src"]  # (16, 4 corners, xy) in source pixels
    assert len({tuple(b.flatten().tolist()) for b in boxes}) == 16
    assert len({out[i].sum().item() for i in range(16)}) == 16


def test_photo_transform_is_reproducible_from_the_seed():
    transform = PhotoTrainTransform((3, 48, 48), MEAN, STD, auto_augment="randaugment", erase_prob=0.5)
    images = photo_batch()
    torch.manual_seed(3)
    first = transform(images)
    torch.manual_seed(3)
    second = transform(images)
    torch.manual_seed(4)
    other = transform(images)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, other)


def test_auto_picks_cifar_for_thumbnails_and_photo_above_64_px():
    assert choose_augment("auto", 32) == "cifar" and choose_augment("auto", 64) == "cifar"
    assert choose_augment("auto", 120) == "photo"
    assert choose_augment("cifar", 500) == "cifar" and choose_augment("photo", 32) == "photo"


def test_train_transform_follows_the_resolved_augment():
    data_config = {"input_size": (3, 32, 32), "mean": MEAN, "std": STD, "interpolation": "bicubic", "crop_pct": 1.0}
    cifar = train_transform(recipe_config({"model": "test_resnet", "augment": "cifar"}), data_config, 100)
    photo = train_transform(recipe_config({"model": "test_resnet", "augment": "photo", "auto_augment": "trivialaugment",
                                           "erase_prob": 0.0}), data_config, 100)
    assert isinstance(cifar, BatchTransform) and cifar.train and cifar.crop_padding == 4 and cifar.cutout == 0
    with_cutout = train_transform(recipe_config({"model": "test_resnet", "augment": "cifar", "cutout": 12}),
                                  data_config, 100)
    assert with_cutout.cutout == 12
    with pytest.raises(SystemExit, match="--cutout"):
        recipe_config({"model": "test_resnet", "cutout": -1})
    assert isinstance(photo, PhotoTrainTransform) and photo.erase is None
    assert type(photo.policy).__name__ == "TrivialAugment"


def test_alternating_flips_show_each_image_the_other_way_round_every_epoch():
    data_config = {"input_size": (3, 8, 8), "mean": (0, 0, 0), "std": (1 / 255,) * 3, "crop_pct": 1.0}
    options = {"model": "test_resnet", "augment": "cifar", "crop_padding": 0, "alternating_flip": True}
    cfg = recipe_config(options)
    transform = train_transform(cfg, data_config, 1000)
    images = torch.randint(0, 256, (1000, 3, 8, 8), dtype=torch.uint8)
    indices = torch.randperm(1000)  # a shuffled batch: flips follow the images, not their places in it

    def flipped(epoch: int, transform=transform) -> torch.Tensor:
        out = transform(images[indices], indices, epoch=epoch)
        assert all(torch.equal(o, i.float().flip(2)) or torch.equal(o, i.float())
                   for o, i in zip(out[:20], images[indices][:20]))
        return (out != images[indices].float()).flatten(1).any(1)  # (the random images are not symmetric)

    first, second, third = flipped(1), flipped(2), flipped(3)
    assert 400 < first.sum() < 600  # half at random in the first epoch...
    assert torch.equal(second, ~first) and torch.equal(third, first)  # ...then the other way round each epoch
    # The same seed draws the same first flips (a resumed run); another seed others.
    assert torch.equal(flipped(1, train_transform(cfg, data_config, 1000)), first)
    other = train_transform(recipe_config({**options, "seed": cfg.seed + 1}), data_config, 1000)
    assert not torch.equal(flipped(1, other), first)
    with pytest.raises(ValueError, match="index"):
        transform(images[:4])
    with pytest.raises(DataError, match="--alternating-flip"):
        train_transform(recipe_config({"model": "test_resnet", "augment": "photo", "alternating_flip": True}),
                        data_config, 1000)
    with pytest.raises(SystemExit, match="--alternating-flip"):
        recipe_config({"model": "test_resnet", "alternating_flip": True, "hflip": False})


def test_policy_operations_are_drawn_per_group_of_images():
    transform = PhotoTrainTransform((3, 32, 32), MEAN, STD, auto_augment="randaugment", erase_prob=0.0)
    drawn = []  # the names of the operations each policy call picked
    transform.policy.register_forward_hook(lambda module, args, out: drawn.append({p.name for p in module._params}))
    torch.manual_seed(0)
    transform(photo_batch(4 * PhotoTrainTransform.POLICY_GROUP, size=40))
    assert len(drawn) == 4 and all(len(ops) == 2 for ops in drawn)
    assert len(set().union(*drawn)) > 2  # one batch, more than one pair of operations
