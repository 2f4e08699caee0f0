"""Image files as users' data holds them, through the readers: high bit depths, damaged files."""

from __future__ import annotations

import io

import numpy as np
import skimage.data
from PIL import Image

from libra.data.images import decode_image_bytes
from libra.data.laion import LaionShards
from libra.tokenizer.image_processing import ImagePreprocessor

from .conftest import encode, write_shard


def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    """skimage's greyscale camera photo as a 16-bit PNG (mode I;16), and its 8-bit pixels."""
    grey = np.asarray(skimage.data.camera())[::4, ::4]
    return encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), grey


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white():
    data, grey = sixteen_bit_png()
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = np.asarray(decode_image_bytes(data))
    # Pillow's own convert("RGB") clips every value above 255: a white picture
    assert pixels.shape == (*grey.shape, 3) and np.array_equal(pixels[..., 0], grey)


def test_laion_hands_the_preprocessor_a_16_bit_png_as_the_preprocessor_reads_it(tmp_path):
    data, _ = sixteen_bit_png()
    write_shard(tmp_path / "00000.tar", [{"__key__": "k0", "png": data, "txt": "a camera man"}])
    preprocessor = ImagePreprocessor(size=32)
    (item,) = LaionShards(str(tmp_path / "00000.tar"), image_transform=preprocessor.to_uint8, shuffle=False)
    assert np.array_equal(item.item.image.numpy(), preprocessor.to_uint8(data).numpy())
