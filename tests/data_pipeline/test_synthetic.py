"""The synthetic shapes dataset: written in the real formats, read back through the real readers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from libra.data import synthetic
from libra.data.coco_karpathy import KarpathyCaptions
from libra.data.laion import LaionShards
from libra.data.llava_instruct import LlavaInstructions
from libra.data.shapes_scene import BACKGROUNDS, COLOURS
from libra.data.synthetic import synthetic_dataset
from libra.data.vqa import VQAv2Questions
from libra.tokenizer.samples import CaptionSample, ConversationSample, VQASample

SMALL = dict(train_images=24, val_images=6, test_images=8, images_per_shard=10)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("cache"), **SMALL)


def test_generated_once_and_keyed_by_parameters(layout):
    stamp = (layout.folder / "meta.json").stat().st_mtime_ns
    again = synthetic_dataset(layout.folder.parent, **SMALL)
    assert again.folder == layout.folder and (layout.folder / "meta.json").stat().st_mtime_ns == stamp
    other = synthetic_dataset(layout.folder.parent, **{**SMALL, "seed": 1})
    assert other.folder != layout.folder
    assert sorted(p.name for p in layout.folder.parent.iterdir()) == sorted(
        [layout.folder.name, other.folder.name]
    )
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['imagesize'\]"):
        synthetic_dataset(layout.folder.parent, imagesize=56)


def test_laion_shards_match_the_karpathy_training_captions(layout):
    assert layout.laion_urls("train").endswith("train-{00000..00002}.tar")
    stream = [item.item for item in LaionShards(layout.laion_urls("train"), shuffle=False)]
    assert all(isinstance(s, CaptionSample) for s in stream) and len(stream) == 24
    karpathy = json.loads(layout.karpathy_file("train").read_text())
    assert [s.caption for s in stream] == [entry["caption"] for entry in karpathy]
    assert stream[0].image.size == (56, 56)


def test_pinned_first_examples(layout):
    karpathy = json.loads(layout.karpathy_file("train").read_text())
    assert karpathy[0] == {
        "image": "train/synth_train_000000000001.png",
        "caption": PINNED_TRAIN_CAPTION,
        "image_id": 1,
    }
    questions = json.loads(layout.vqa_questions_file("test").read_text())["questions"]
    assert questions[0] == PINNED_TEST_QUESTION


def test_test_split_through_caption_and_vqa_readers(layout):
    captions = KarpathyCaptions(str(layout.karpathy_file("test")), str(layout.image_root))
    assert len(captions) == 8 * 5
    ground_truth = json.loads(layout.ground_truth_file("test").read_text())
    assert [image["id"] for image in ground_truth["images"]] == list(range(200001, 200009))
    assert {captions[i].key for i in range(len(captions))} == {str(i) for i in range(200001, 200009)}

    vqa = VQAv2Questions(
        str(layout.vqa_questions_file("test")),
        str(layout.image_root),
        str(layout.vqa_annotations_file("test")),
        image_name=layout.vqa_image_name("test"),
    )
    assert len(vqa) == 8 * 3
    for index in range(len(vqa)):
        sample = vqa[index]
        assert isinstance(sample, VQASample) and len(sample.answers) == 10
        answer = Counter(sample.answers).most_common(1)[0][0]
        pixels = np.asarray(sample.image).reshape(-1, 3)
        if sample.question == "what color is the background?":  # the answer is in the pixels
            assert tuple(pixels[0]) == BACKGROUNDS[answer]
        elif sample.question.startswith("what color"):
            assert (pixels == COLOURS[answer]).all(axis=1).sum() > 20


def test_conversations_read_without_skips(layout):
    dataset = LlavaInstructions(str(layout.llava_file("train")), str(layout.image_root))
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(isinstance(s, ConversationSample) for s in samples)
    assert sum(1 for s in samples if s.images) == 24
    assert all(s.turns[0].text.startswith("<image>\n") for s in samples if s.images)


def test_splits_do_not_share_images(layout):
    def pixels(split, count):
        return {
            (layout.image_root / split / f"synth_{split}_{i:012d}.png").read_bytes()
            for i in range(1, count + 1)
        }

    train = pixels("train", 24)
    test = {p for p in (layout.image_root / "test").iterdir()}
    assert len(train) == 24 and len(test) == 8
    assert not train & {p.read_bytes() for p in test}


def test_answers_are_not_dominated_by_one(tmp_path):
    layout = synthetic_dataset(tmp_path, train_images=600, val_images=1, test_images=1)
    answers = layout.meta["splits"]["train"]["answers"]
    total = sum(answers.values())
    assert total == 1800 and max(answers.values()) / total < 0.12
    assert len(answers) == 24  # 5 colours, 4 shapes, 3 counts, 3 backgrounds, 5 positions, 2 sizes, yes/no


# Pinned: a change here means the generator's output changed; bump GENERATOR_VERSION with it.
PINNED_TRAIN_CAPTION = "three red squares on a gray background"
PINNED_TEST_QUESTION = {
    "image_id": 200001,
    "question": "what color is the background?",
    "question_id": 2000010,
}


def test_a_concurrent_writer_finishing_first_is_fine(tmp_path, monkeypatch):
    real = synthetic._write_dataset

    def racing(temporary, config):
        real(temporary.with_name(temporary.name.split(".tmp-")[0]), config)  # another rank wins
        real(temporary, config)

    monkeypatch.setattr(synthetic, "_write_dataset", racing)
    layout = synthetic_dataset(tmp_path, train_images=2, val_images=1, test_images=1)
    assert [p.name for p in tmp_path.iterdir()] == [layout.folder.name]  # our temporary copy is gone
    assert layout.meta["splits"]["test"]["questions"] == 3
