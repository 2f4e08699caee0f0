"""Decoding images for the readers: bytes or files to fully loaded RGB PIL images, the shape test
of the reference LAION/COCO readers (docs/design.md §6.1), and the worker-side preprocessing call.

Decoding is forced here (``load()``), so a truncated or corrupt file fails inside the reader,
where it is skipped and counted, not later inside the collator or the model. The pixel count is
checked from the header first (``open_header``, which the preprocessor's ``open_image`` shares): a
decompression bomb is refused before any pixel is decoded.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from libra.tokenizer.image_processing import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, open_header, to_rgb

from .skips import skip

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


# What opening an image can raise on bad data; ``image_fault`` names the skip reason. Pillow's
# PNG decoder raises SyntaxError ("broken PNG file") for a damaged chunk found while decoding.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def image_fault(error: Exception) -> str:
    """The skip reason of an image that could not be opened: too large, else corrupt."""
    if isinstance(error, (ImageTooLarge, Image.DecompressionBombError)):
        return "image_too_large"
    return "corrupt_image"


def shape_acceptable(width: int, height: int, ratio_threshold: float | None, min_size: int = 0) -> bool:
    """Whether an image's aspect ratio lies strictly inside (1/t, t); raises for unusable sizes.

    The reference raises for a zero side or a longest side under ``min_size``; a shape outside
    the ratio band is not dropped there, it only forces image-to-text with padding.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image has a zero side: {width}x{height}")
    if max(width, height) < min_size:
        raise ValueError(f"image {width}x{height} is smaller than min_image_size={min_size}")
    if ratio_threshold is None:
        return True
    low, high = sorted((ratio_threshold, 1 / ratio_threshold))
    return low < width / height < high


def decode_image_bytes(
    data: bytes, draft_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Decode encoded image bytes to RGB. Raises OSError/ValueError on corrupt data and
    ``ImageTooLarge`` (before decoding) when the header claims more than ``max_pixels`` pixels
    (None: no limit of ours; PIL's own still applies).

    ``draft_size`` lets the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding (the result stays
    at least that large on both sides), which is much cheaper than decoding full size and
    resizing afterwards; preprocessing resizes to the exact size anyway.
    """
    image = open_header(io.BytesIO(data), max_pixels)
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    # convert() copies even an RGB image (most JPEGs): ~0.3 ms a photo for nothing. Others go
    # through the preprocessor's to_rgb: Pillow's convert("RGB") clips a 16-bit PNG to white.
    return image if image.mode == "RGB" else to_rgb(image)


def open_image_file(
    path: str | Path, draft_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open an image file as RGB; FileNotFoundError when it is missing, OSError when corrupt,
    ``ImageTooLarge`` above ``max_pixels``."""
    return decode_image_bytes(Path(path).read_bytes(), draft_size, max_pixels)


def preprocess(transform: Callable[[Image.Image], Any] | None, image: Image.Image, where: str) -> Any:
    """Run the worker-side image transform (e.g. the tokenizer's ``ImagePreprocessor``); an image it
    refuses (ValueError: extreme aspect ratio, empty) becomes a counted skip, not a crash."""
    if transform is None:
        return image
    try:
        return transform(image)
    except ValueError as error:
        return skip("rejected_image", where, str(error))
