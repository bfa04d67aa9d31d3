"""Safe image loading for anything a user uploads.

One place decides what an uploaded image becomes: EXIF orientation applied, the first
frame of an animation, RGB (alpha composited on white; CMYK, 16-bit, palette and greyscale
converted), and a clear `UserError` for files that are not images, are truncated or corrupt,
are empty, or are too large (decompression bombs included).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

# The largest image we decode, in pixels; Pillow's own bomb check is set to the same bound.
MAX_PIXELS = 64_000_000
MAX_BYTES = 100 * 1024 * 1024
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


def _to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.size and arr.max() > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray((arr * 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, background + (255,))
        return Image.alpha_composite(canvas, img).convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageLike, *, what: str = "image", max_side: int | None = None) -> Image.Image:
    """Open `source` as an RGB image or raise `UserError` saying what is wrong.

    `source` may be a path, raw bytes, a PIL image or a HxWxC uint8 array (what gradio hands
    over). `max_side`, when given, downsizes (keeping the aspect ratio) anything larger.
    """
    if source is None:
        raise UserError(f"No {what} was given: upload one.")
    if isinstance(source, np.ndarray):
        if source.size == 0:
            raise UserError(f"The {what} is empty (zero pixels).")
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    elif isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise UserError(f"The {what} file could not be found.")
            if path.stat().st_size > MAX_BYTES:
                raise UserError(f"The {what} file is larger than {MAX_BYTES // 2**20} MB.")
            data = path.read_bytes()
        if not data:
            raise UserError(f"The {what} file is empty (0 bytes).")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                if img.width * img.height > MAX_PIXELS:
                    raise UserError(
                        f"The {what} is {img.width}x{img.height} pixels; the limit is "
                        f"{MAX_PIXELS // 1_000_000} megapixels. Downsize it first.")
                img.seek(0)  # first frame of an animation
                img.load()
        except UserError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"The {what} declares too many pixels to decode safely "
                            f"(limit {MAX_PIXELS // 1_000_000} megapixels).") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
            raise UserError(f"The {what} could not be read as an image "
                            "(not an image, truncated or corrupt).") from None
    if img.width == 0 or img.height == 0:
        raise UserError(f"The {what} has zero size ({img.width}x{img.height}).")
    if img.width * img.height > MAX_PIXELS:
        raise UserError(f"The {what} is {img.width}x{img.height} pixels; the limit is "
                        f"{MAX_PIXELS // 1_000_000} megapixels.")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth refusing the image for
        pass
    img = _to_rgb(img)
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def center_crop_resize(img: Image.Image, width: int, height: int) -> Image.Image:
    """Crop the largest centred box of the target aspect ratio, then resize to (width, height)."""
    return ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS)
