"""Turning any image file a person or a dataset may hold into RGB uint8 pixels.

Used by the dataset cache, evaluation and the app, so an image is decoded the same way everywhere.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .config import MAX_IMAGE_PIXELS


class ImageError(ValueError):
    """An image that cannot be used, with a message fit to show a person."""


class UnsupportedImageError(ImageError):
    """The data is not in an image format Pillow reads (the API answers 415 rather than 400)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode: EXIF rotation applied, alpha composited on white, 16-bit scaled to 8."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF rotation, read from the header without decoding the pixels."""
    width, height = image.size
    if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return height, width


def fit_and_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize so the image covers `size` (height, width), shorter side first, then centre-crop to it."""
    h, w = size
    if image.size == (w, h):
        return image
    scale = max(h / image.height, w / image.width)
    image = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))), Image.BICUBIC)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def load_rgb(source: str | Path | bytes | BinaryIO | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS,
             size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode `source` to an (H, W, 3) uint8 array, or raise ImageError saying why not.

    With `size` (height, width), the image is resized to cover it and centre-cropped (`fit_and_crop`); a JPEG
    much larger than that is decoded at 1/2, 1/4 or 1/8 scale first (draft mode), which is several times
    faster than a full decode and still leaves at least `size` pixels for the resize."""
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"image is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
        if width < 1 or height < 1:
            raise ImageError("image has no pixels")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if size is not None and image.format == "JPEG":
                oriented_h, oriented_w = oriented_size(image)
                scale = max(size[0] / oriented_h, size[1] / oriented_w)
                if scale < 0.5:  # draft mode only reduces by 2, 4 or 8
                    image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            rgb = to_rgb(image)
            if size is not None:
                rgb = fit_and_crop(rgb, size)
            return np.array(rgb, dtype=np.uint8)  # a writable copy
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image is too large to decode safely ({exc})") from None
    except FileNotFoundError:
        raise ImageError(f"file not found: {source}") from None
    except Image.UnidentifiedImageError:
        raise UnsupportedImageError("not an image file (the format is not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageError(f"the image data is corrupt or truncated ({exc})") from None
