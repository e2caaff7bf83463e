"""Grad-CAM: heatmaps from the grad-cam library on timm CNNs and ViTs, the overlay, and the live /explain endpoint."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from conftest import (EXAMPLES, browser_page, make_member, make_vit_member, needs_chromium, running_app, tiny_vit,
                       write_manifest)
from vision_ensemble.data import BatchTransform
from vision_ensemble.evaluation.explain import class_heatmaps, overlay, target_layer
from vision_ensemble.images import load_rgb
from vision_ensemble.model import training_data_config


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("photo", ["cifar10_cat.png", "china.jpg"])
def test_gradcam_gives_an_image_sized_heatmap_that_depends_on_the_class(name, photo):
    torch.manual_seed(0)
    model = (tiny_vit() if name == "test_vit" else timm.create_model("test_resnet", num_classes=10)).eval()
    transform = BatchTransform.from_data_config(training_data_config(model, 32))
    pixels = torch.from_numpy(load_rgb(EXAMPLES / photo)).permute(2, 0, 1)
    with torch.no_grad():
        order = model(transform(pixels[None]))[0].argsort(descending=True).tolist()
    heatmaps = class_heatmaps(model, transform, pixels, [order[0], order[-1]])
    assert heatmaps.shape == (2, *pixels.shape[1:])
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert heatmaps[0].std() > 0.05  # not constant
    assert np.abs(heatmaps[0] - heatmaps[1]).max() > 0.1  # the top and the bottom class differ
    height, width = pixels.shape[1:]
    if width > height:  # the member sees its centre crop only: no heat outside it
        _, left, _, box_width = transform.crop_box(height, width)
        start, stop = math.floor(left), math.ceil(left + box_width)
        assert 0 < start and stop < width
        assert heatmaps[:, :, :start].max() == 0 and heatmaps[:, :, stop:].max() == 0
        assert heatmaps[0, :, start:stop].max() > 0.9


@pytest.mark.parametrize("name, img_size, expected", [
    ("seresnet50", 224, "layer4"), ("seresnet50", 64, "layer3"), ("efficientnet_b0", 224, "blocks.6"),
    ("efficientnet_b0", 64, "blocks.4"), ("test_vit", 32, "blocks.5.norm1")])
def test_target_layer_is_the_last_stage_with_a_usable_grid(name, img_size, expected):
    model = tiny_vit() if name == "test_vit" else timm.create_model(name, num_classes=10)
    layer, reshape = target_layer(model, (img_size, img_size))
    assert dict(model.named_modules())[expected] is layer
    if name == "test_vit":  # the class token dropped, the 8x8 patch tokens as a grid
        assert reshape(torch.zeros(2, 65, 64)).shape == (2, 64, 8, 8)
    else:
        assert reshape is None


def test_overlay_has_the_uploaded_images_size_and_leaves_cold_pixels_alone():
    image = load_rgb(EXAMPLES / "china.jpg")
    heatmap = np.zeros(image.shape[:2], dtype=np.float32)
    heatmap[100:200, 300:400] = 1.0
    blended = overlay(image, heatmap)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    np.testing.assert_array_equal(blended[:100], image[:100])
    assert np.abs(blended[100:200, 300:400].astype(int) - image[100:200, 300:400]).mean() > 20


@pytest.fixture(scope="module")
def explain_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    manifest = write_manifest(root, [make_member(root / "cnn", 0, 48, sharpen=5.0), make_vit_member(root / "vit", 1)],
                              weights=[0.5, 0.5])
    with running_app(manifest, tmp_path_factory.mktemp("log") / "app.log") as client_and_url:
        yield client_and_url


@pytest.mark.slow
def test_explain_endpoint_returns_one_overlay_per_member(explain_app, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, _ = explain_app
    photo = EXAMPLES / "china.jpg"
    label, _, _ = client.predict(handle_file(str(photo)), api_name="/classify")
    gallery, timing = client.predict(handle_file(str(photo)), api_name="/explain")
    top = label["label"]
    assert [item["caption"] for item in gallery] == [f"{m}: Grad-CAM for '{top}'" for m in ("cnn", "vit")]
    for item in gallery:
        overlaid = Image.open(item["image"])
        assert overlaid.size == Image.open(photo).size
        assert np.asarray(overlaid).std() > 10
    assert f"'{top}'" in timing and " ms" in timing
    (tmp_path / "not_an_image.png").write_text("label,score\n1,0.5\n")
    with pytest.raises(AppError, match="not an image file"):
        client.predict(handle_file(str(tmp_path / "not_an_image.png")), api_name="/explain")


@pytest.mark.slow
@needs_chromium
def test_explain_button_shows_the_overlays_in_the_browser(explain_app, tmp_path):
    _, url = explain_app
    shots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with browser_page(url, height=1100) as page:
        page.locator("input[type=file]").first.set_input_files(str(EXAMPLES / "china.jpg"))
        page.get_by_role("button", name="Explain (Grad-CAM per member)").click()
        page.get_by_text("Grad-CAM for the ensemble's top class").first.wait_for(state="visible", timeout=60_000)
        gallery = page.locator("[data-testid='gallery'], .gallery-container").first
        gallery.locator("img").first.wait_for(state="visible", timeout=20_000)
        assert gallery.locator("img").count() >= 2  # one overlay per member
        page.screenshot(path=str(shots / "tab_classify_explain.png"), full_page=True)
