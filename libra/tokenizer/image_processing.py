"""Image preprocessing of Libra (docs/design.md §5.6): open/convert → optional pad to square → CLIP transform.

The CLIP transform reproduces transformers' ``CLIPImageProcessor`` (4.38) bit for bit without
torchvision: Pillow bicubic resize of the short side (long side truncated), centre crop, rescale by
1/255 in float64, cast to float32, normalise in float32, channels first.

The transform comes in two halves, so DataLoader workers do no float work (and ship 4x fewer bytes):
``to_uint8`` (decode, pad, resize, crop → uint8 (3, S, S)) runs in the workers, ``normalize``
(uint8 → CLIP-normalised float32, batched, on any device) runs beside the vision tokenizer.
``normalize`` looks every pixel up in a 3 x 256 table built with the exact float64 → float32 op
order of the arithmetic, so both halves together give the same bits as ``__call__`` (tests pin this).

Divergences from the official code, on purpose:
* EXIF orientation is applied (the official code ignores it, so phone photos reach CLIP rotated);
* every Pillow mode works: the official eval processor pads before converting to RGB and crashes on
  non-square ``L``/``LA`` images; we convert first. RGBA/LA alpha is dropped, not composited, as the
  official ``convert("RGB")`` does; 16-bit and float images are scaled down to 8 bits;
* unreadable files, images too large to decode (PIL's decompression-bomb limit), empty images and
  extreme aspect ratios raise a ``ImageError`` naming the sample.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# The most pixels an encoded image may claim: 8192 x 8192, above any camera photo (a 61 MP full-frame
# sensor is 9504 x 6336) and below PIL's 89 MP warning threshold; decoded it is ~200 MB of RGB. PIL on
# its own only warns up to twice its threshold and refuses beyond.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192


class ImageError(ValueError):
    """An input image that cannot be used; the message names the sample and the fix."""


class ImageTooLarge(ImageError):
    """An image whose header claims more pixels than ``max_pixels``: refused before decoding (a 100 kB
    PNG can claim 10000 x 10000 pixels, 300 MB once decoded)."""


def open_header(source, max_pixels: int | None) -> Image.Image:
    """``Image.open`` of a file or file object: reads the header only, and raises ``ImageTooLarge``
    when it claims more than ``max_pixels`` pixels (None: PIL's own limit only)."""
    with warnings.catch_warnings():
        # the check below replaces PIL's warning (its hard limit, twice the warning's, stays)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise ImageTooLarge(
            f"{image.width}x{image.height} = {image.width * image.height} pixels, above "
            f"max_image_pixels={max_pixels}"
        )
    return image


def open_image(
    source: str | Path | bytes | Image.Image, key: str = "", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Decode ``source`` (path, encoded bytes or PIL image) into an RGB PIL image.

    EXIF orientation is applied. ``key`` names the sample in error messages. An encoded image that
    claims more than ``max_pixels`` pixels is refused before it is decoded; a PIL image is taken as it
    is (its caller has it in memory already).
    """
    name = key or (str(source) if isinstance(source, (str, Path)) else "<in-memory image>")
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = open_header(io.BytesIO(source) if isinstance(source, bytes) else source, max_pixels)
            image.load()  # decode now: a truncated JPEG fails here, not later inside a worker
        except FileNotFoundError as err:
            raise ImageError(f"image {name!r}: file not found") from err
        except ImageTooLarge as err:
            raise ImageTooLarge(f"image {name!r} is too large: {err}; downscale it") from err
        except Image.DecompressionBombError as err:  # above twice PIL's MAX_IMAGE_PIXELS (179 MP)
            raise ImageTooLarge(f"image {name!r} is too large to decode ({err}); downscale it") from err
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            # PIL's "cannot identify image file <_io.BytesIO object at 0x...>" says less than this
            detail = "not a format Pillow reads" if isinstance(err, UnidentifiedImageError) else err
            raise ImageError(
                f"image {name!r} is not a readable image ({detail}); check the file or drop the sample"
            ) from err
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image {name!r} has size {image.width}x{image.height}; drop the sample")
    return to_rgb(apply_exif_orientation(image))


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose`` for images that need it; others come back as they are.

    ``exif_transpose`` copies every image without an orientation tag (≈ 1 ms for a 640 px photo,
    most of the images a reader sees), so the tag is read first; the pixels are the same either way.
    """
    with contextlib.suppress(Exception):  # a broken EXIF block should not lose a good image
        image.load()
        if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            image = ImageOps.exif_transpose(image)
    return image


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


def padded_square_resize(image: Image.Image, colour: tuple[int, int, int], size: int) -> Image.Image:
    """``pad_to_square(image, colour).resize((size, size), BICUBIC)`` of an RGB image, bit for bit,
    with less work.

    Pillow resizes in two passes with 8-bit rounding in between: horizontal on every source row,
    then vertical; each output pixel is a fixed-point weighted sum of the source pixels in its
    filter support. Two savings follow, both keeping Pillow's own coefficients:

    * wide images (padding = whole rows): the horizontal pass gives every padding row the same
      output, so only the image rows and one padding row go through it; the padded (size x w)
      intermediate is assembled here and Pillow runs just the vertical pass on it;
    * both orientations: the output rows (wide) or columns (tall) past the image, whose support
      lies in the trailing padding, are the padding's own value and are filled, not resampled.
      Only a prefix is resampled, through ``resize(box=(0, 0, end, ...))``: see ``_prefix``.
    """
    w, h = image.size
    side = max(w, h)
    if w == h or side == size:  # nothing to pad, or the padded square needs no resize at all
        square = pad_to_square(image, colour)
        return square if square.size == (size, size) else square.resize((size, size), Image.BICUBIC)
    offset = (side - min(w, h)) // 2
    prefix = _prefix(side, size, image_end=offset + min(w, h))
    padding = _padding_values(image.mode, colour, side, size)
    if padding is None:  # not met for any size tried; kept so that an odd Pillow build stays exact
        return pad_to_square(image, colour).resize((size, size), Image.BICUBIC)
    if w > h:
        rows = image.resize((size, h), Image.BICUBIC)  # horizontal pass only
        height = side if prefix is None else prefix[2]
        halfway = Image.new(image.mode, (size, height), padding[0])
        halfway.paste(rows, (0, offset))  # the top of what the one-call resize holds between passes
        if prefix is None:
            return halfway.resize((size, size), Image.BICUBIC)  # vertical pass only
        count, end, _ = prefix
        band = halfway.resize((size, count), Image.BICUBIC, box=(0, 0, size, end))  # vertical only
    else:
        if prefix is None:
            return pad_to_square(image, colour).resize((size, size), Image.BICUBIC)
        count, end, width = prefix
        canvas = Image.new(image.mode, (width, side), colour)  # the left part of the padded square
        canvas.paste(image, (offset, 0))
        band = canvas.resize((count, size), Image.BICUBIC, box=(0, 0, end, side))
    out = Image.new(image.mode, (size, size), padding[1])
    out.paste(band, (0, 0))
    return out


@functools.lru_cache(maxsize=1024)
def _padding_values(
    mode: str, colour: tuple[int, int, int], side: int, size: int
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """What the horizontal pass, then both passes, of the side -> size resize make of pure padding;
    None if either is not constant.

    The fixed-point coefficients of one output pixel sum to 2**22 within half a unit per tap,
    so a constant input comes back unchanged: 255 * ksize / 2 stays far below the 2**21 rounding
    margin. Checked here on one row and one column (same coefficient tables as the square's
    passes) rather than trusted; cached, as photo sides repeat.
    """
    row = Image.new(mode, (side, 1), colour).resize((size, 1), Image.BICUBIC)  # horizontal pass
    low_high = row.getextrema()
    if any(low != high for low, high in low_high):
        return None
    halfway = tuple(low for low, _ in low_high)
    column = Image.new(mode, (1, side), halfway).resize((1, size), Image.BICUBIC)
    low_high = column.getextrema()  # vertical pass of a padding column
    if any(low != high for low, high in low_high):
        return None
    return halfway, tuple(low for low, _ in low_high)


def _prefix(side: int, size: int, image_end: int) -> tuple[int, float, int] | None:
    """(count, end, extent): resampling source pixels [0, extent) with ``box`` [0, end) to ``count``
    outputs gives the first ``count`` outputs of the side -> size resize, bit for bit, and every
    later output's support starts at or after ``image_end`` (it sees padding only). None when no
    such prefix is shorter than ``size``.

    Pillow builds each axis's coefficients from ``in0 + (i + 0.5) * scale`` with
    ``scale = (double)(in1 - in0) / out`` (``in0``, ``in1`` single floats). With ``in0 = 0`` and
    ``end / count == side / size`` as rationals, ``end`` exact in a float, the double ``scale``
    is the same correctly rounded quotient, so every centre, bound and weight of the first
    ``count`` outputs is the same computation as in the full resize. ``end = count * side / size``
    is a float-exact dyadic number when ``count`` is a multiple of the odd part of
    ``size / gcd(side, size)``. ``extent`` covers the support of output ``count - 1``, so the
    clamp of the support at the source's edge (its width) does not bite earlier than in the square.
    An offset box (``in0 > 0``) would round its centres differently, so the leading padding is
    resampled along with the image.
    """
    reduced = size // math.gcd(side, size)
    step = reduced // (reduced & -reduced)  # the odd part
    scale = side / size
    support = 2.0 * max(scale, 1.0)  # bicubic support, widened when downscaling
    # output i starts reading at int((i + 0.5) * scale - support + 0.5): past image_end from here on
    # (+ 2 outputs of margin for the rounding of that float expression)
    needed = max(0, math.floor((image_end + support - 0.5) / scale - 0.5) + 2)
    count = -(-needed // step) * step
    if count >= size:
        return None
    end = count * side / size
    extent = min(side, max(image_end, math.ceil(end + support) + 2))
    if count == 0 or side >= 1 << 24 or float(np.float32(end)) != end:
        return None
    return count, end, extent


@functools.lru_cache(maxsize=16)
def normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3 * 256,) float32: channel c's normalised value of level v at ``c * 256 + v``.

    Built with the op order of the per-pixel arithmetic (rescale by 1/255 in float64, cast to
    float32, subtract and divide in float32), so looking a pixel up gives the same bits as computing
    it. Shared between calls: do not modify it.
    """
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean_ = np.asarray(mean, dtype=np.float32)[:, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None]
    return torch.from_numpy(((scaled[None, :] - mean_) / std_).reshape(-1))


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
        return self.normalize(self.to_uint8(image, key))

    def to_uint8(self, image: str | Path | bytes | Image.Image, key: str = "") -> torch.Tensor:
        """One image → uint8 pixels (3, size, size): everything but rescale and normalise.

        The worker half of ``__call__``: ``normalize(to_uint8(x))`` is ``__call__(x)`` bit for bit.
        A bound ``preprocessor.to_uint8`` is picklable, so it can be a reader's ``image_transform``.
        """
        name = key or (str(image) if isinstance(image, (str, Path)) else "<in-memory image>")
        image = open_image(image, name)
        w, h = image.size
        if self.max_aspect_ratio is not None and max(w, h) / min(w, h) > self.max_aspect_ratio:
            raise ImageError(
                f"image {name!r} is {w}x{h}: aspect ratio above max_aspect_ratio={self.max_aspect_ratio};"
                " crop it or drop the sample"
            )
        if self.pad_to_square:
            # the padded square resizes straight to (size, size); the centre crop has nothing to cut
            image = padded_square_resize(image, self.pad_colour, self.size)
        return self._resize_and_crop(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., 3, H, W) → CLIP-normalised float32 on the same device.

        A table lookup per pixel (see ``normalisation_table``): the same bits as the float64 →
        float32 arithmetic of ``CLIPImageProcessor``, on any device, for one image or a batch.
        """
        if pixels.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 pixels, got {pixels.dtype} (already normalised?)")
        if pixels.dim() < 3 or pixels.shape[-3] != 3:
            raise ValueError(f"normalize expects pixels (..., 3, H, W), got {tuple(pixels.shape)}")
        table = normalisation_table(tuple(self.mean), tuple(self.std)).to(pixels.device)
        planes = pixels.reshape(-1, pixels.shape[-2] * pixels.shape[-1])  # (n * 3, H * W)
        # plane k is channel k % 3, whose levels start at row (k % 3) * 256 of the table
        first_level = torch.arange(planes.shape[0], dtype=torch.int32, device=pixels.device) % 3 * 256
        first_level = first_level.view(-1, 1)
        out = torch.empty(planes.shape, dtype=torch.float32, device=pixels.device)
        # On the CPU a plane at a time keeps the int32 indices in cache (a gather over a whole
        # batch is several times slower there); an accelerator takes the batch in one launch.
        step = 1 if pixels.device.type == "cpu" else planes.shape[0]
        for start in range(0, planes.shape[0], step):
            rows = slice(start, start + step)
            index = (planes[rows].to(torch.int32) + first_level[rows]).view(-1)
            torch.index_select(table, 0, index, out=out[rows].view(-1))
        return out.view(pixels.shape)

    def clip_transform(self, image: Image.Image) -> torch.Tensor:
        """Resize the short side (bicubic), centre crop, rescale and normalise an RGB image."""
        return self.normalize(self._resize_and_crop(image))

    def _resize_and_crop(self, image: Image.Image) -> torch.Tensor:
        """Resize the short side (bicubic), centre crop an RGB image → uint8 (3, size, size)."""
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.size * long / short)  # truncation, as transformers computes it
        new_size = (self.size, new_long) if w <= h else (new_long, self.size)
        if new_size != (w, h):
            image = image.resize(new_size, resample=Image.BICUBIC)
        w, h = image.size
        if (w, h) != (self.size, self.size):
            top, left = (h - self.size) // 2, (w - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        # channels first straight from Pillow's packer, one band at a time: half the copies of
        # split() + asarray + stack, and cheaper than transposing an (H, W, 3) array
        pixels = np.empty((3, self.size, self.size), dtype=np.uint8)
        for plane, band in zip(pixels, "RGB"):
            plane[:] = np.frombuffer(image.tobytes("raw", band), dtype=np.uint8).reshape(self.size, self.size)
        return torch.from_numpy(pixels)  # (3, size, size)

    def batch(self, images: list, keys: list[str] | None = None) -> torch.Tensor:
        """Several images → float32 (n, 3, size, size); tensors already preprocessed pass through."""
        keys = keys or [""] * len(images)
        return torch.stack([self.ensure_pixels(im, k) for im, k in zip(images, keys)])

    def ensure_pixels(self, image, key: str = "") -> torch.Tensor:
        """Normalised float32 pixels of ``image``; a uint8 tensor from ``to_uint8`` is normalised,
        a float (3, size, size) tensor passes through."""
        pixels = self.worker_pixels(image, key)
        return self.normalize(pixels) if pixels.dtype == torch.uint8 else pixels

    def worker_pixels(self, image, key: str = "") -> torch.Tensor:
        """The cheap form of ``image`` for a worker to ship: uint8 (3, size, size) from
        ``to_uint8``, or the tensor it already is (uint8, or float if normalised earlier)."""
        if isinstance(image, torch.Tensor):
            if tuple(image.shape) != (3, self.size, self.size):
                raise ImageError(
                    f"image {key or '<tensor>'!r} has shape {tuple(image.shape)}; expected"
                    f" (3, {self.size}, {self.size}) pixels from this preprocessor"
                )
            return image
        return self.to_uint8(image, key)
