"""End to end: readers in DataLoader workers → the processor's text side → model inputs."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from libra.data.batching import ReaderCollator, ReaderState
from libra.data.laion import LaionShards
from libra.data.llava_instruct import LlavaInstructions
from libra.data.samplers import ResumableSampler
from libra.data.skips import Skipped
from libra.data.synthetic import synthetic_dataset
from libra.data.synthetic_readers import synthetic_vqa
from libra.tokenizer.processor import LibraProcessor
from libra.tokenizer.samples import CaptionSample, ConversationSample, Turn

from .conftest import encode, laion_sample, write_shard

TINY_FOLDER = "tests/data/vision_tokenizer_tiny/model"


@pytest.fixture(scope="module")
def processor():
    return LibraProcessor.from_pretrained(TINY_FOLDER)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return synthetic_dataset(
        tmp_path_factory.mktemp("cache"), train_images=16, val_images=2, test_images=2, images_per_shard=8
    )


def test_laion_batches_carry_pixels_and_tokens(processor, layout):
    reader = LaionShards(layout.laion_urls("train"), image_transform=processor.preprocessor, shuffle=False)
    loader = DataLoader(reader, batch_size=4, num_workers=2, collate_fn=ReaderCollator(processor.collator))
    batches = list(loader)
    assert [b.num_samples for b in batches] == [4, 4, 4, 4]
    text = batches[0].inputs
    assert text.pixel_values.shape == (4, 3, 56, 56) and text.pixel_values.dtype == torch.float32
    # 18 image tokens per image (boi + 4x4 + eoi) in every row
    assert (text.image_slot >= 0).sum(dim=1).tolist() == [18, 18, 18, 18]
    inputs = processor.to_model_inputs(text)
    assert inputs["input_ids"].shape[:2] == (2, 4)  # (K codebooks, B)
    assert inputs["labels"].shape == inputs["input_ids"].shape


def test_instruction_batches_through_a_resumable_sampler(processor, layout):
    dataset = LlavaInstructions(
        str(layout.llava_file("train")), str(layout.image_root), image_transform=processor.preprocessor
    )
    sampler = ResumableSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=ReaderCollator(processor.collator))
    state = ReaderState()
    seen = []
    for batch in loader:
        state.update(batch)
        seen.extend(batch.inputs.keys)
    assert state.drawn == len(dataset) and sorted(seen) == sorted(dataset[i].key for i in range(len(dataset)))


def test_a_sample_the_processor_refuses_is_dropped_and_counted(processor):
    good = CaptionSample(Image.new("RGB", (56, 56), (200, 0, 0)), "a red square", key="good")
    bad = ConversationSample([Turn("user", "<image>\nwhat?")], [], key="bad")  # tag without an image
    batch = ReaderCollator(processor.collator)([good, Skipped("no_caption", "shard x key y"), bad])
    assert (batch.num_samples, batch.drawn, batch.skipped) == (1, 3, {"no_caption": 1, "rejected_sample": 1})
    assert batch.inputs.keys == ["good"]


def test_text_to_image_samples_are_counted_and_survive_a_resume(processor):
    """The count behind an export's training record (task=generate reads it, libra/pretrained.py)."""
    red = Image.new("RGB", (56, 56), (200, 0, 0))
    t2i = CaptionSample(red, "a red square", key="t2i", task="t2i")
    i2t = CaptionSample(red, "a red square", key="i2t")
    state = ReaderState()
    state.update(ReaderCollator(processor.collator)([t2i, i2t, t2i]))
    state.update(ReaderCollator(processor.collator)([i2t]))
    assert state.text_to_image == 2
    resumed = ReaderState()
    resumed.load_state_dict(state.state_dict())
    assert resumed.text_to_image == 2


def test_all_skipped_gives_an_empty_batch():
    batch = ReaderCollator(processor=None)([Skipped("corrupt_image", "k")])
    assert (batch.inputs, batch.num_samples, batch.drawn) == (None, 0, 1)


def test_real_photos_and_vqa_prompts_through_the_processor(processor, tmp_path, photos):
    names = ["astronaut", "chelsea", "coffee", "camera"]
    write_shard(tmp_path / "00000.tar", [laion_sample(n, photos[n], f"a photo of {n}") for n in names])
    reader = LaionShards(str(tmp_path / "00000.tar"), image_transform=processor.preprocessor, shuffle=False)
    batch = next(iter(DataLoader(reader, batch_size=4, collate_fn=ReaderCollator(processor.collator))))
    # the same JPEG bytes through the preprocessor directly: the reader adds nothing to the pixels
    expected = torch.stack([processor.preprocessor(encode(photos[n])) for n in names])
    assert torch.equal(batch.inputs.pixel_values, expected)
    assert batch.inputs.keys == [f"00000.tar/{n}" for n in names]

    # benchmark prompts: VQA samples are rendered as generation prompts (left padded, no labels)
    generator = dict(train_images=2, val_images=1, test_images=3)
    vqa = synthetic_vqa(tmp_path / "cache", "test", generator=generator)
    prompts = ReaderCollator(partial(processor.collator, generation=True))([vqa[i] for i in range(len(vqa))])
    assert prompts.num_samples == 9 and prompts.inputs.label_mask is None
    assert prompts.inputs.pixel_values.shape == (9, 3, 56, 56)
    assert (prompts.inputs.attention_mask[:, -1] == 1).all()  # left padding: every prompt ends at the edge


def test_hidden_clip_features_of_text_to_image_samples_reach_the_model_as_zeros(processor, layout):
    urls = layout.laion_urls("train")
    reader = LaionShards(urls, image_transform=processor.preprocessor, t2i_prob=1.0, seed=2, shuffle=False)
    loader = DataLoader(reader, batch_size=16, collate_fn=ReaderCollator(processor.collator))
    batch = next(iter(loader)).inputs
    hidden = batch.hide_features
    assert 0 < int(hidden.sum()) < 16  # both kinds in the batch (seeded, 0.9 hidden)
    signal = processor.to_model_inputs(batch)["contiguous_signal"]
    for row in range(16):
        at_image = batch.image_slot[row] >= 0
        strength = signal[row][at_image].abs().sum()
        assert (strength == 0) == bool(hidden[batch.image_slot[row][at_image][0]])


def test_samples_cut_to_max_length_are_counted(processor):
    long = ConversationSample([Turn("user", "tell me " * 30), Turn("assistant", "no")], key="long")
    short = ConversationSample([Turn("user", "hi"), Turn("assistant", "hello")], key="short")
    collate = ReaderCollator(processor.collator)
    width = collate([short]).inputs.text_ids.shape[1]
    processor.collator.max_length = width + 4
    try:
        batch = collate([long, short, long])
    finally:
        processor.collator.max_length = None
    assert batch.truncated == 2 and batch.inputs.text_ids.shape[1] == width + 4
    state = ReaderState()
    state.update(batch)
    state.update(collate([long]))  # no max_length now: nothing cut
    assert state.metrics()["data/truncated"] == 2
    again = ReaderState()
    again.load_state_dict(state.state_dict())
    assert again.metrics() == state.metrics()
