"""The worker-side image path: readers and the collator ship uint8 pixels; the device side
normalises them to exactly the float pixels of the one-step preprocessor."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from libra.data.batching import ReaderCollator
from libra.data.laion import LaionShards
from libra.tokenizer.processor import LibraProcessor

from .conftest import encode, laion_sample, write_shard

TINY_FOLDER = "tests/data/vision_tokenizer_tiny/model"
NAMES = ["astronaut", "chelsea", "coffee", "rocket", "camera"]  # wide, tall and square; camera is grey


@pytest.fixture(scope="module")
def processor():
    return LibraProcessor.from_pretrained(TINY_FOLDER)


@pytest.mark.parametrize("transform", ["none", "to_uint8"])
def test_laion_worker_pixels_are_uint8_and_normalise_to_the_float_path(
    processor, tmp_path, photos, transform
):
    write_shard(tmp_path / "00000.tar", [laion_sample(n, photos[n], f"a photo of {n}") for n in NAMES])
    # no transform: decoded PIL images reach the collator; to_uint8: the reader resizes (a bound
    # method, pickled into the worker)
    image_transform = None if transform == "none" else processor.preprocessor.to_uint8
    reader = LaionShards(str(tmp_path / "00000.tar"), image_transform=image_transform, shuffle=False)
    loader = DataLoader(reader, batch_size=5, num_workers=1, collate_fn=ReaderCollator(processor.collator))
    batch = next(iter(loader)).inputs
    assert batch.pixel_values.dtype == torch.uint8 and batch.pixel_values.shape == (5, 3, 56, 56)
    expected = torch.stack([processor.preprocessor(encode(photos[n])) for n in NAMES])
    assert torch.equal(processor.preprocessor.normalize(batch.pixel_values), expected)
    # and the model inputs are those of a batch of float pixels
    float_reader = LaionShards(
        str(tmp_path / "00000.tar"), image_transform=processor.preprocessor, shuffle=False
    )
    floats = ReaderCollator(processor.collator)(list(float_reader)).inputs
    assert floats.pixel_values.dtype == torch.float32
    a, b = processor.to_model_inputs(batch), processor.to_model_inputs(floats)
    for key in ("input_ids", "labels", "contiguous_signal"):
        assert torch.equal(a[key], b[key]), key
