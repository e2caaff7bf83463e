"""Decoding any image a person may upload: modes, EXIF rotation, bit depth, bad files, decompression bombs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vision_ensemble.images import ImageError, load_rgb


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb_uint8(mode):
    source = Image.new(mode, (40, 30))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixels = load_rgb(encode(source, fmt))
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    pixels = load_rgb(encode(Image.fromarray(ramp, mode="I;16"), "PNG"))
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels[..., 0])) > 32


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    assert np.all(load_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG")) == 255)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pixels = load_rgb(encode(image, "JPEG", exif=exif))
    assert pixels.shape == (60, 20, 3)


def test_bad_files_raise_image_errors_with_plain_messages():
    with pytest.raises(ImageError, match="not an image file"):
        load_rgb(b"label,score\n1,0.5\n")
    truncated = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:300]
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_rgb(truncated)
    bomb = encode(Image.new("L", (10_000, 10_000)), "PNG")  # 100 MP of zeros: a few hundred KB on disk
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError, match="limit is"):
        load_rgb(bomb)
