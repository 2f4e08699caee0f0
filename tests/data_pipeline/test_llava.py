"""LLaVA instruction json: multi-turn, text-only, several image roots, the dash fallback, bad entries."""

from __future__ import annotations

import json
import logging

import pytest

from libra.data.llava_instruct import LlavaInstructions
from libra.data.samplers import LengthGroupedSampler
from libra.data.skips import Skipped
from libra.tokenizer.samples import ConversationSample, Turn


def conversation(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


@pytest.fixture
def llava(tmp_path, photos):
    coco, ocr = tmp_path / "root_a" / "coco" / "train2017", tmp_path / "root_b" / "ocr_vqa" / "images"
    coco.mkdir(parents=True)
    ocr.mkdir(parents=True)
    photos["astronaut"].save(coco / "000000000009.jpg")
    photos["chelsea"].save(ocr / "cat_book.jpg")  # the entry says cat-book.jpg
    photos["coffee"].save(coco / "000000000025.jpg")
    entries = [
        {
            "id": "multi",
            "image": "coco/train2017/000000000009.jpg",
            "conversations": conversation(
                "<image>\nWho is this?", "An astronaut.", "What is she wearing?", "A suit."
            ),
        },
        {"id": "text", "conversations": conversation("Say hi <image>", "Hi!")},
        {
            "id": "other_root",
            "image": "ocr_vqa/images/cat-book.jpg",
            "conversations": conversation("What animal is on the cover?\n<image>", "A cat."),
        },
        {
            "id": "missing",
            "image": "coco/train2017/absent.jpg",
            "conversations": conversation("<image>\nWhat?", "?"),
        },
        {
            "id": "two_tags",
            "image": "coco/train2017/000000000025.jpg",
            "conversations": conversation("<image><image>\nCompare", "Same."),
        },
        {
            "id": "broken",
            "image": "coco/train2017/000000000025.jpg",
            "conversations": [{"from": "gpt", "value": 3}],
        },
        "not an entry",
    ]
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(entries))
    return path


def test_entries_read_lazily_with_several_roots(llava, photos, caplog):
    roots = [str(llava.parent / "root_a"), str(llava.parent / "root_b")]
    dataset = LlavaInstructions(str(llava), roots, image_token_count=18)
    assert len(dataset) == 7
    with caplog.at_level(logging.WARNING, logger="libra.data"):
        items = [dataset[i] for i in range(len(dataset))]
    multi, text, other = items[:3]
    assert isinstance(multi, ConversationSample) and multi.key == "multi"
    assert multi.turns == [
        Turn("user", "<image>\nWho is this?"),
        Turn("assistant", "An astronaut."),
        Turn("user", "What is she wearing?"),
        Turn("assistant", "A suit."),
    ]
    assert [image.size for image in multi.images] == [photos["astronaut"].size]
    assert text.images == [] and text.turns[0] == Turn("user", "Say hi")  # stray tag removed
    assert other.images[0].size == photos["chelsea"].size  # second root + "-" -> "_" fallback
    assert [(i.reason, i.where.split(" of ")[0]) for i in items[3:]] == [
        ("missing_image", "llava entry 3"),
        ("image_tag_mismatch", "llava entry 4"),
        ("malformed_entry", "llava entry 5"),
        ("malformed_entry", "llava entry 6"),
    ]
    assert all(isinstance(i, Skipped) for i in items[3:])
    assert "(id missing): missing_image (coco/train2017/absent.jpg" in caplog.text
    # whitespace words (the tag is one) + 18 tokens per image; a non-dict entry is 0
    assert dataset.lengths == [12 + 18, 4, 9 + 18, 3 + 18, 3 + 18, 1 + 18, 0]


def test_without_fallback_the_dashed_name_is_missing(llava):
    roots = [str(llava.parent / "root_a"), str(llava.parent / "root_b")]
    dataset = LlavaInstructions(str(llava), roots, dash_underscore_fallback=False)
    assert dataset[2] == Skipped("missing_image", f"llava entry 2 of {llava} (id other_root)")


def test_length_grouped_batches_hold_similar_lengths():
    class Lengths:
        lengths = [(i * 37) % 101 for i in range(64)]

        def __len__(self):
            return 64

    sampler = LengthGroupedSampler(Lengths(), batch_size=4, megabatch=4, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(64))
    spread = [
        max(Lengths.lengths[i] for i in b) - min(Lengths.lengths[i] for i in b)
        for b in zip(*[iter(order)] * 4)
    ]
    assert sum(spread) / len(spread) < 25  # random batches of 4 from 0..100 spread ~60


def test_an_image_root_that_is_not_there_is_a_clear_error(llava):
    # a mistyped root would otherwise leave only the text-only entries, each image one a skip
    roots = [str(llava.parent / "root_a"), str(llava.parent / "root_c")]
    with pytest.raises(FileNotFoundError, match="root_c"):
        LlavaInstructions(str(llava), roots)
