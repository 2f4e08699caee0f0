"""Image files as users' data holds them, through the readers: high bit depths, damaged files."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import skimage.data
from PIL import Image

from libra.data.images import decode_image_bytes
from libra.data.laion import LaionShards
from libra.data.llava_instruct import LlavaInstructions
from libra.data.skips import Skipped
from libra.tokenizer.image_processing import ImagePreprocessor

from .conftest import encode, write_shard


def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    """skimage's greyscale camera photo as a 16-bit PNG (mode I;16), and its 8-bit pixels."""
    grey = np.asarray(skimage.data.camera())[::4, ::4]
    return encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), grey


def png_with_a_broken_chunk() -> bytes:
    """A PNG whose image-data chunk claims fewer bytes than it holds (one damaged length field):
    Pillow opens it, then raises SyntaxError ("broken PNG file") while decoding."""
    data = bytearray(encode(Image.fromarray(np.asarray(skimage.data.astronaut())[::8, ::8]), "PNG"))
    at = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    data[at : at + 4] = struct.pack(">I", length // 2)
    return bytes(data)


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


def test_a_png_with_a_broken_chunk_is_a_counted_skip_in_every_reader(tmp_path, photos):
    broken = png_with_a_broken_chunk()
    good = encode(photos["chelsea"])
    write_shard(
        tmp_path / "00000.tar",
        [
            {"__key__": "k0", "png": broken, "txt": "broken"},
            {"__key__": "k1", "jpg": good, "txt": "a cat"},
        ],
    )
    items = [item.item for item in LaionShards(str(tmp_path / "00000.tar"), shuffle=False)]
    assert items[0] == Skipped("corrupt_image", f"shard {tmp_path / '00000.tar'} key k0")
    assert items[1].caption == "a cat"

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(broken)
    entry = {"id": "b", "image": "broken.png", "conversations": [{"from": "human", "value": "<image>?"}]}
    entry["conversations"].append({"from": "gpt", "value": "!"})
    (tmp_path / "llava.json").write_text(json.dumps([entry]))
    sample = LlavaInstructions(str(tmp_path / "llava.json"), str(tmp_path / "images"))[0]
    assert isinstance(sample, Skipped) and sample.reason == "corrupt_image"
