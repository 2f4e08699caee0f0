"""Image preprocessing: fixture pixels bit-exact, every Pillow mode, EXIF, bad files."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from libra.tokenizer.image_processing import (
    ImageError,
    ImagePreprocessor,
    ImageTooLarge,
    _padding_values,
    _prefix,
    apply_exif_orientation,
    open_image,
    pad_to_square,
    padded_square_resize,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
VT_DIR = DATA_DIR / "vision_tokenizer_tiny"
MODEL_DIR = VT_DIR / "model"  # the tiny official-layout checkpoint folder
IMAGE_NAMES = ["astronaut", "chelsea", "rocket_portrait", "coins_gray", "coffee_rgba"]


CLIP_DIR = MODEL_DIR / "clip-vit-tiny-patch14-56"


@pytest.mark.parametrize("pad, name", [(True, "pixel_values_pad"), (False, "pixel_values_nopad")])
def test_fixture_pixels(vt_expected, pad, name):
    pre = ImagePreprocessor.from_clip_folder(CLIP_DIR, pad_to_square=pad)
    assert pre.size == 56 and pre.pad_colour == (122, 116, 104)
    pixels = pre.batch([VT_DIR / "images" / f"{n}.png" for n in IMAGE_NAMES])
    assert pixels.dtype == torch.float32
    assert (pixels - vt_expected[name]).abs().max() <= 1e-6


def test_every_pillow_mode_gives_pixels():
    pre = ImagePreprocessor(size=56)
    rgb = Image.fromarray(data.chelsea())  # non-square
    for mode in ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "I", "1"]:
        image = rgb.convert("L").convert(mode) if mode.startswith("I") else rgb.convert(mode)
        pixels = pre(image, key=mode)
        assert pixels.shape == (3, 56, 56) and torch.isfinite(pixels).all(), mode
    # 16-bit greyscale is scaled, not clipped: a mid-grey 16-bit image stays mid-grey.
    grey16 = Image.fromarray(np.full((20, 30), 32896, dtype=np.uint16))
    grey8 = Image.fromarray(np.full((20, 30), 128, dtype=np.uint8))
    assert torch.allclose(pre(grey16), pre(grey8))


def test_exif_orientation_is_applied():
    image = Image.fromarray(data.chelsea())  # 451 x 300
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    pre = ImagePreprocessor(size=56, pad_to_square=False)
    rotated = pre(buffer.getvalue())
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))  # pixels as stored, no EXIF
    assert torch.equal(rotated, pre(Image.fromarray(np.rot90(decoded, k=-1).copy())))  # 90° clockwise
    assert not torch.equal(rotated, pre(Image.fromarray(decoded)))


def test_bad_images_raise_clear_errors(tmp_path):
    pre = ImagePreprocessor(size=56)
    jpeg = io.BytesIO()
    Image.fromarray(data.astronaut()).save(jpeg, format="JPEG")
    with pytest.raises(ImageError, match="shard-3/0007"):
        pre(jpeg.getvalue()[:400] + b"\x00" * 50, key="shard-3/0007")
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("this is not an image")
    with pytest.raises(ImageError, match="notes.jpg"):
        pre(text_file)
    with pytest.raises(ImageError, match="empty-one.*0x0"):
        pre(Image.new("RGB", (0, 0)), key="empty-one")
    with pytest.raises(ImageError, match="strip.*1x5000.*max_aspect_ratio"):
        pre(Image.new("RGB", (1, 5000)), key="strip")
    with pytest.raises(ImageError, match="missing.png.*not found"):
        pre(tmp_path / "missing.png")
    with pytest.raises(ImageError, match=r"bad-tensor.*\(3, 56, 56\)"):
        pre.ensure_pixels(torch.zeros(3, 32, 32), key="bad-tensor")


def test_an_encoded_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path):
    """The limit the data readers apply holds for every decoder of the toolkit (chat, server, demo,
    processor): a header that claims too many pixels is refused, its pixel data never read."""
    png = io.BytesIO()
    Image.new("L", (10000, 10000)).save(png, format="PNG")
    header_only = png.getvalue()[:200]  # decoding this would fail as truncated, not as too large
    (tmp_path / "huge.png").write_bytes(header_only)
    with pytest.raises(ImageTooLarge, match=r"huge.png.*100000000 pixels, above max_image_pixels=67108864"):
        open_image(tmp_path / "huge.png")
    with pytest.raises(ImageTooLarge, match="upload"):
        ImagePreprocessor(size=56).to_uint8(header_only, key="upload")
    small = io.BytesIO()
    Image.new("RGB", (16, 16)).save(small, format="PNG")
    with pytest.raises(ImageTooLarge, match="256 pixels, above max_image_pixels=255"):
        open_image(small.getvalue(), max_pixels=255)
    assert open_image(small.getvalue(), max_pixels=256).size == (16, 16)
    assert open_image(Image.new("RGB", (9000, 9000))).size == (9000, 9000)  # in memory already: taken


# ---- the worker half (uint8) + the device half (normalize) against the float arithmetic ----------


def _float_reference(pre: ImagePreprocessor, image: Image.Image) -> torch.Tensor:
    """The preprocessing as written before the uint8 split: pad canvas, one resize, crop, then
    rescale in float64, cast to float32, normalise in float32 (CLIPImageProcessor's op order)."""
    if pre.pad_to_square:
        image = pad_to_square(image, pre.pad_colour)
    w, h = image.size
    new_long = int(pre.size * max(w, h) / min(w, h))
    new_size = (pre.size, new_long) if w <= h else (new_long, pre.size)
    if new_size != (w, h):
        image = image.resize(new_size, resample=Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    top, left = (pixels.shape[0] - pre.size) // 2, (pixels.shape[1] - pre.size) // 2
    pixels = pixels[top : top + pre.size, left : left + pre.size]
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    normalised = (scaled - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def _photo_crops() -> list[Image.Image]:
    """Real photos (colour and greyscale) cut to landscape, portrait and square shapes."""
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera(), data.coins()]
    crops = []
    for array in photos:
        image = Image.fromarray(array).convert("RGB")
        w, h = image.size
        for box in [(0, 0, w, h), (3, 5, w - 7, h * 2 // 3), (w // 5, 1, w // 5 + h // 2, h - 1)]:
            crops.append(image.crop(box))
    return crops


@pytest.mark.parametrize("size", [56, 336])
@pytest.mark.parametrize("pad", [True, False])
def test_uint8_then_normalize_is_the_float_arithmetic_bit_for_bit(size, pad):
    pre = ImagePreprocessor(size=size, pad_to_square=pad)
    crops = _photo_crops()
    shapes = {"wide" if c.width > c.height else "tall" if c.width < c.height else "square" for c in crops}
    assert shapes == {"wide", "tall", "square"}
    uint8 = torch.stack([pre.to_uint8(c) for c in crops])
    assert uint8.dtype == torch.uint8 and uint8.shape == (len(crops), 3, size, size)
    expected = torch.stack([_float_reference(pre, c) for c in crops])
    assert torch.equal(pre.normalize(uint8), expected)  # batched, as the device side runs it
    assert torch.equal(torch.stack([pre(c) for c in crops]), expected)  # __call__ keeps its contract


@pytest.mark.parametrize("pad, name", [(True, "pixel_values_pad"), (False, "pixel_values_nopad")])
def test_uint8_path_reproduces_the_fixture_pixels(vt_expected, pad, name):
    pre = ImagePreprocessor.from_clip_folder(CLIP_DIR, pad_to_square=pad)
    paths = [VT_DIR / "images" / f"{n}.png" for n in IMAGE_NAMES]
    uint8 = torch.stack([pre.to_uint8(p) for p in paths])
    pixels = pre.normalize(uint8)
    assert (pixels - vt_expected[name]).abs().max() <= 1e-6
    reference = torch.stack([_float_reference(pre, open_image(p)) for p in paths])
    assert torch.equal(pixels, reference) and torch.equal(pre.batch(uint8), reference)


def test_padded_square_resize_is_pad_then_resize():
    rng = np.random.default_rng(0)
    photos = [
        Image.fromarray(data.coffee()),
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.rocket()),
    ]
    colours = [ImagePreprocessor().pad_colour, (0, 0, 0), (255, 255, 255), (1, 254, 128)]
    cases = [
        (56, 30, 56),  # side == size: no resize
        (30, 56, 56),
        (90, 90, 56),  # square
        (300, 2, 336),  # extreme, upscaled padding
        (2, 300, 336),
        (7, 3, 17),  # tiny and odd
        (3, 7, 17),
        (1, 2, 56),
        (640, 427, 336),  # photo shapes whose prefix is taken
        (427, 640, 336),
        (600, 400, 56),
        (400, 600, 56),
        (641, 640, 336),  # near-square
        (640, 641, 336),
    ]
    for _ in range(400):
        side = int(rng.integers(2, 700))
        short = (
            int(rng.integers(1, side + 1))
            if rng.random() < 0.7
            else int(rng.integers(side * 9 // 10, side + 1))
        )
        cases.append(
            (side, short, int(rng.choice([56, 336, 17, 224])))
            if rng.random() < 0.5
            else (short, side, int(rng.choice([56, 336])))
        )
    prefixes = 0
    for index, (w, h, size) in enumerate(cases):
        if index % 3 == 0:  # noise: every pixel different, so a wrong weight or bound shows
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        else:
            image = photos[index % len(photos)].resize((w, h))
        colour = colours[index % len(colours)]
        expected = np.asarray(pad_to_square(image, colour).resize((size, size), Image.BICUBIC))
        assert np.array_equal(np.asarray(padded_square_resize(image, colour, size)), expected), (
            w,
            h,
            size,
            colour,
        )
        side = max(w, h)
        prefixes += w != h and _prefix(side, size, (side - min(w, h)) // 2 + min(w, h)) is not None
    assert prefixes > len(cases) // 3  # the band path, not only the fallbacks, was compared


def test_padding_stays_its_colour_through_both_passes_for_every_level():
    # The fill of _padding_values rests on this: a constant row or column comes back unchanged.
    levels = np.arange(256, dtype=np.uint8)
    rgb = np.stack([levels, 255 - levels, levels * 7], axis=-1)  # every level in every channel
    for side, size in [(2, 17), (5, 56), (300, 56), (451, 336), (640, 336), (1999, 336), (4000, 56)]:
        rows = Image.fromarray(np.repeat(rgb[:, None], side, axis=1))  # (256, side): row v is level v
        assert np.array_equal(
            np.asarray(rows.resize((size, 256), Image.BICUBIC)), np.repeat(rgb[:, None], size, 1)
        )
        columns = Image.fromarray(np.repeat(rgb[None], side, axis=0))  # (side, 256): column v is level v
        assert np.array_equal(
            np.asarray(columns.resize((256, size), Image.BICUBIC)), np.repeat(rgb[None], size, 0)
        )
        assert _padding_values("RGB", (3, 200, 77), side, size) == ((3, 200, 77), (3, 200, 77))


def test_prefix_box_gives_the_first_outputs_of_the_full_resize():
    # resize(box=(0, 0, end, .)) to count outputs must be the first count of the full resize
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(300):
        side, size = int(rng.integers(2, 1200)), int(rng.choice([17, 56, 224, 336]))
        prefix = _prefix(side, size, image_end=int(rng.integers(1, side + 1)))
        if prefix is None:
            continue
        count, end, extent = prefix
        assert 0 < count < size and end <= extent <= side
        noise = Image.fromarray(rng.integers(0, 256, (3, side, 3), dtype=np.uint8))
        full = np.asarray(noise.resize((size, 3), Image.BICUBIC))
        part = noise.crop((0, 0, extent, 3)).resize((count, 3), Image.BICUBIC, box=(0, 0, end, 3))
        assert np.array_equal(np.asarray(part), full[:, :count]), (side, size, prefix)
        checked += 1
    assert checked > 100


def test_normalisation_table_matches_the_arithmetic_for_every_level():
    for pre in (ImagePreprocessor(), ImagePreprocessor(mean=(0.5, 0.25, 0.1), std=(0.3, 0.7, 0.123))):
        levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 2, 256).contiguous()
        scaled = (levels.numpy().astype(np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
        assert torch.equal(pre.normalize(levels), torch.from_numpy((scaled - mean) / std))


def test_tensor_inputs_and_normalize_errors():
    pre = ImagePreprocessor(size=56)
    uint8 = pre.to_uint8(Image.fromarray(data.chelsea()))
    assert pre.worker_pixels(uint8) is uint8  # already the worker form: shipped as it is
    assert torch.equal(pre.ensure_pixels(uint8), pre.normalize(uint8))
    assert pre.ensure_pixels(pre.normalize(uint8)).dtype == torch.float32
    with pytest.raises(TypeError, match="uint8"):
        pre.normalize(uint8.float())
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        pre.normalize(uint8[:2])


def test_images_without_orientation_are_not_copied():
    image = Image.fromarray(data.chelsea())
    assert apply_exif_orientation(image) is image


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalize_on_the_device_gives_the_cpu_bits():
    pre = ImagePreprocessor(size=56)
    uint8 = torch.stack([pre.to_uint8(c) for c in _photo_crops()])
    assert torch.equal(pre.normalize(uint8.cuda()).cpu(), pre.normalize(uint8))
