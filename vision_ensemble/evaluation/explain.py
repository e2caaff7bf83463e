"""Grad-CAM: where in the image a member looked when it scored a class.

The heatmaps come from the grad-cam library (`pytorch_grad_cam.GradCAM`) at the last layer that still has a
spatial layout: a CNN's last convolutional stage (timm's `feature_info` names the stages of every timm CNN;
at small input sizes, the last one still GRADCAM_MIN_GRID cells across), or a ViT's patch tokens in its last
block, reshaped to the patch grid.  Each member sees the image through its
own preprocessing (input size, centre crop), so its heatmap is mapped back onto the part of the image that
member saw.  Only the overlay (colour map, alpha blend) is written here.
"""

from __future__ import annotations

from typing import Callable

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from ..config import GRADCAM_MIN_GRID
from ..data import BatchTransform


class ExplainError(ValueError):
    """A model Grad-CAM cannot explain, with a message fit to show a person."""


def target_layer(model: torch.nn.Module, input_size: tuple[int, int]) -> tuple[torch.nn.Module, Callable | None]:
    """The layer Grad-CAM reads, and the reshape that turns its output into (N, C, H, W) (None: already is)."""
    if hasattr(model, "patch_embed") and hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens"):
        prefix, (grid_h, grid_w) = model.num_prefix_tokens, model.patch_embed.grid_size

        def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:  # (N, prefix + H*W, C) -> (N, C, H, W)
            return tokens[:, prefix:].reshape(len(tokens), grid_h, grid_w, -1).permute(0, 3, 1, 2)

        last = model.blocks[-1]
        # With class-token pooling the head reads only the class token, so the patch tokens leaving the last
        # block get no gradient; the patch tokens entering its attention (norm1's output) do.
        return (last.norm1 if getattr(model, "global_pool", None) == "token" else last), tokens_to_grid
    feature_info = getattr(model, "feature_info", None)
    if not feature_info:
        raise ExplainError(f"{type(model).__name__} is not a timm CNN or ViT (no feature_info to find its last stage)")
    fine_enough = [f for f in feature_info if min(input_size) // f["reduction"] >= GRADCAM_MIN_GRID]
    return model.get_submodule((fine_enough or feature_info[:1])[-1]["module"]), None


def class_heatmaps(model: torch.nn.Module, transform: BatchTransform, image: torch.Tensor,
                   classes: list[int]) -> np.ndarray:
    """Grad-CAM of each class in `classes` for one uint8 (3, H, W) image: (len(classes), H, W) in [0, 1],
    zero where the member's centre crop does not reach."""
    # Imported here: grad-cam brings scikit-learn (1 s of every evaluate.py and app.py start, BENCHMARKS.md).
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = target_layer(model, transform.size)
    x = transform(image[None]).expand(len(classes), -1, -1, -1)  # one row per class: one forward, one backward
    cam = GradCAM(model, [layer], reshape_transform=reshape)
    try:
        with torch.enable_grad():  # the app turns gradients off; Grad-CAM needs them
            maps = cam(x, targets=[ClassifierOutputTarget(c) for c in classes])  # at the input size, each 0..1
    finally:
        cam.activations_and_grads.release()  # not `with GradCAM(...)`: its __exit__ swallows IndexError
        model.zero_grad(set_to_none=True)
    return place_in_image(torch.from_numpy(maps), transform, *image.shape[-2:])


def place_in_image(maps: torch.Tensor, transform: BatchTransform, height: int, width: int) -> np.ndarray:
    """(K, h, w) maps over the model's input -> (K, height, width) over the source image, zero outside the crop."""
    top, left, box_h, box_w = transform.crop_box(height, width)
    top, left = round(top), round(left)
    box_h, box_w = min(height - top, max(1, round(box_h))), min(width - left, max(1, round(box_w)))
    out = np.zeros((len(maps), height, width), dtype=np.float32)
    out[:, top:top + box_h, left:left + box_w] = F.interpolate(
        maps[:, None].float(), size=(box_h, box_w), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()
    return out


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6, colormap: str = "jet") -> np.ndarray:
    """(H, W, 3) uint8 image with a (H, W) [0, 1] heatmap blended in: colour where the heat is, the photo elsewhere."""
    colours = matplotlib.colormaps[colormap](np.uint8(heatmap * 255), bytes=True)[..., :3]
    weight = (alpha * heatmap)[..., None].astype(np.float32)
    return np.uint8(image * (1 - weight) + colours * weight + 0.5)


def explain_members(members, models: list[torch.nn.Module], image: np.ndarray, class_index: int) -> list[np.ndarray]:
    """One overlay per member (each through its own preprocessing) of Grad-CAM for `class_index`."""
    pixels = torch.from_numpy(image).permute(2, 0, 1)
    return [overlay(image, class_heatmaps(model, member.transform, pixels, [class_index])[0])
            for member, model in zip(members, models)]
