"""Image preprocessing of Libra (spec §5.6): open/convert → optional pad to square → CLIP transform.

The CLIP transform reproduces transformers' ``CLIPImageProcessor`` (4.38) bit for bit without
torchvision: Pillow bicubic resize of the short side (long side truncated), centre crop, rescale by
1/255 in float64, cast to float32, normalise in float32, channels first.

Divergences from the official code, on purpose:
* EXIF orientation is applied (the official code ignores it, so phone photos reach CLIP rotated);
* every Pillow mode works: the official eval processor pads before converting to RGB and crashes on
  non-square ``L``/``LA`` images; we convert first. RGBA/LA alpha is dropped, not composited, as the
  official ``convert("RGB")`` does; 16-bit and float images are scaled down to 8 bits;
* unreadable files, empty images and extreme aspect ratios raise a ``ImageError`` naming the sample.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    """An input image that cannot be used; the message names the sample and the fix."""


def open_image(source: str | Path | bytes | Image.Image, key: str = "") -> Image.Image:
    """Decode ``source`` (path, encoded bytes or PIL image) into an RGB PIL image.

    EXIF orientation is applied. ``key`` names the sample in error messages.
    """
    name = key or (str(source) if isinstance(source, (str, Path)) else "<in-memory image>")
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()  # decode now: a truncated JPEG fails here, not later inside a worker
        except FileNotFoundError as err:
            raise ImageError(f"image {name!r}: file not found") from err
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ImageError(
                f"image {name!r} is not a readable image ({err}); check the file or drop the sample"
            ) from err
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image {name!r} has size {image.width}x{image.height}; drop the sample")
    with contextlib.suppress(Exception):  # a broken EXIF block should not lose a good image
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is dropped, high bit depths scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit/32-bit greyscale: Pillow's own conversion clips at 255, so scale instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # go through RGBA so Pillow does not warn; alpha dropped below
    return image.convert("RGB")


def pad_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """Centre ``image`` on a square canvas of side max(w, h) filled with ``colour``."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


@dataclass(frozen=True)
class ImagePreprocessor:
    """The CLIP transform plus Libra's pad-to-square step, as plain settings.

    ``pad_to_square=True`` is the training/demo path (``pixel_values_pad``); False is the bare
    ``libra_image`` processor (centre crop of non-square images).
    """

    size: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    pad_to_square: bool = True
    # Beyond this long/short ratio an image is refused: padding leaves almost only background and
    # the no-pad resize would allocate a giant strip (1x5000 -> 336x1680000). None disables it.
    max_aspect_ratio: float | None = 20.0

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        # int() truncates, as the official code does: (122, 116, 104) for the CLIP mean.
        return tuple(int(m * 255) for m in self.mean)

    @classmethod
    def from_clip_folder(cls, folder: str | Path, pad_to_square: bool = True) -> ImagePreprocessor:
        """Read size/mean/std from a CLIP folder's ``preprocessor_config.json`` (old or new format)."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; the CLIP folder needs its preprocessor_config.json")
        cfg = json.loads(path.read_text())
        crop = cfg.get("crop_size", 336)
        size = cfg.get("size", crop)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = crop.get("height") if isinstance(crop, dict) else crop
        if size != crop:
            raise ValueError(f"{path}: resize {size} != crop {crop}; Libra expects square crops of one size")
        return cls(
            size=int(size),
            mean=tuple(cfg["image_mean"]),
            std=tuple(cfg["image_std"]),
            pad_to_square=pad_to_square,
        )

    def to_preprocessor_config(self) -> dict:
        """The legacy ``preprocessor_config.json`` content (int size, as the official CLIP folder)."""
        return {
            "crop_size": self.size,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "resample": 3,
            "size": self.size,
        }

    def settings(self) -> dict:
        """Everything that changes the pixels: part of the token-cache key."""
        return asdict(self)

    def __call__(self, image: str | Path | bytes | Image.Image, key: str = "") -> torch.Tensor:
        """One image (path, bytes or PIL) → CLIP-normalised float32 pixels (3, size, size)."""
        name = key or (str(image) if isinstance(image, (str, Path)) else "<in-memory image>")
        image = open_image(image, name)
        w, h = image.size
        if self.max_aspect_ratio is not None and max(w, h) / min(w, h) > self.max_aspect_ratio:
            raise ImageError(
                f"image {name!r} is {w}x{h}: aspect ratio above max_aspect_ratio={self.max_aspect_ratio};"
                " crop it or drop the sample"
            )
        if self.pad_to_square:
            image = pad_to_square(image, self.pad_colour)
        return self.clip_transform(image)

    def clip_transform(self, image: Image.Image) -> torch.Tensor:
        """Resize the short side (bicubic), centre crop, rescale and normalise an RGB image."""
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.size * long / short)  # truncation, as transformers computes it
        new_size = (self.size, new_long) if w <= h else (new_long, self.size)
        if new_size != (w, h):
            image = image.resize(new_size, resample=Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
        top = (pixels.shape[0] - self.size) // 2
        left = (pixels.shape[1] - self.size) // 2
        pixels = pixels[top : top + self.size, left : left + self.size]
        scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        normalised = (scaled - mean) / std
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))

    def batch(self, images: list, keys: list[str] | None = None) -> torch.Tensor:
        """Several images → (n, 3, size, size); tensors already preprocessed pass through."""
        keys = keys or [""] * len(images)
        return torch.stack([self.ensure_pixels(im, k) for im, k in zip(images, keys)])

    def ensure_pixels(self, image, key: str = "") -> torch.Tensor:
        """Preprocess ``image`` unless it already is a (3, size, size) tensor."""
        if isinstance(image, torch.Tensor):
            if tuple(image.shape) != (3, self.size, self.size):
                raise ImageError(
                    f"image {key or '<tensor>'!r} has shape {tuple(image.shape)}; expected"
                    f" (3, {self.size}, {self.size}) pixels from this preprocessor"
                )
            return image
        return self(image, key)
