"""Small datasets in the real on-disk formats, written from skimage photos and drawn shapes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import webdataset as wds
from PIL import Image

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera")  # camera: greyscale


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photos, shrunk (long side 160) so decoding them keeps the tests fast."""
    result = {}
    for name in PHOTO_NAMES:
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        image.thumbnail((160, 160))
        result[name] = image
    return result


def write_shard(path: Path, samples: list[dict]) -> Path:
    """One webdataset shard as img2dataset writes it; ``samples`` are TarWriter dicts."""
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def laion_sample(key: str, image: Image.Image, caption: str | None, via: str = "txt") -> dict:
    """``{key}.jpg`` + the caption in ``.txt`` (``via="txt"``) or only in the ``.json``."""
    sample = {"__key__": key, "jpg": encode(image)}
    meta = {"key": key, "width": image.width, "height": image.height}
    if caption is not None and via == "txt":
        sample["txt"] = caption
    elif caption is not None:
        meta["caption"] = caption
    sample["json"] = json.dumps(meta).encode()
    return sample
