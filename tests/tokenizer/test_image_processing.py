"""Image preprocessing: fixture pixels bit-exact, every Pillow mode, EXIF, bad files."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from libra.tokenizer.image_processing import ImageError, ImagePreprocessor

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
