"""Turning any image file a person or a dataset may hold into RGB uint8 pixels.

Used by the dataset cache, evaluation and the app, so an image is decoded the same way everywhere.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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


def load_rgb(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode `source` to an (H, W, 3) uint8 array, or raise ImageError saying why not."""
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
            image.load()
            return np.array(to_rgb(image), dtype=np.uint8)  # a writable copy
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
