"""COCO Karpathy captions: single and list-valued captions (docs/design.md B21), ground truth, bad entries."""

from __future__ import annotations

import json
import logging

import pytest

from libra.data.coco_karpathy import KarpathyCaptions, image_id_of, karpathy_to_coco_ground_truth
from libra.data.skips import Skipped
from libra.tokenizer.samples import CaptionSample


@pytest.fixture
def karpathy(tmp_path, photos):
    (tmp_path / "val2014").mkdir()
    for number, name in [(391895, "astronaut"), (522418, "chelsea"), (184613, "coffee")]:
        photos[name].save(tmp_path / "val2014" / f"COCO_val2014_{number:012d}.jpg")
    entries = [
        {
            "image": "val2014/COCO_val2014_000000391895.jpg",
            "caption": ["An astronaut  poses.", "A *person* in a suit"],
        },
        {
            "image": "val2014/COCO_val2014_000000522418.jpg",
            "caption": "A cat lying down",
            "image_id": "coco_522418",
        },
        {
            "image": "val2014/COCO_val2014_000000184613.jpg",
            "caption": ["Coffee in a cup", "A cup", "A drink"],
        },
        {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": "missing picture"},
        {"image": "val2014/COCO_val2014_000000391895.jpg", "caption": 7},  # malformed entry
    ]
    path = tmp_path / "coco_karpathy_val.json"
    path.write_text(json.dumps(entries))
    return path


def test_one_sample_per_reference_with_cleaned_captions(karpathy, caplog):
    dataset = KarpathyCaptions(str(karpathy), str(karpathy.parent))
    assert len(dataset) == 2 + 1 + 3 + 1 + 1
    with caplog.at_level(logging.WARNING, logger="libra.data"):
        items = [dataset[i] for i in range(len(dataset))]
    samples = [i for i in items if isinstance(i, CaptionSample)]
    assert [(s.key, s.caption) for s in samples] == [
        ("391895", "an astronaut poses."),
        ("391895", "a person in a suit"),
        ("522418", "a cat lying down"),
        ("184613", "coffee in a cup"),
        ("184613", "a cup"),
        ("184613", "a drink"),
    ]
    assert samples[0].image.size == (160, 160)
    assert sorted(i.reason for i in items if isinstance(i, Skipped)) == ["malformed_entry", "missing_image"]
    assert "karpathy entry 3 of" in caplog.text and "karpathy entry 4 of" in caplog.text


def test_one_sample_per_image_for_evaluation(karpathy):
    dataset = KarpathyCaptions(str(karpathy), str(karpathy.parent), one_per_reference=False, sample_n=3)
    assert [dataset[i].caption for i in range(len(dataset))] == [
        "an astronaut poses.",
        "a cat lying down",
        "coffee in a cup",
    ]


def test_ground_truth_in_coco_format(karpathy):
    gt = karpathy_to_coco_ground_truth(karpathy)
    assert [image["id"] for image in gt["images"]] == [391895, 522418, 184613, 1]
    assert [(a["image_id"], a["caption"], a["id"]) for a in gt["annotations"][:3]] == [
        (391895, "An astronaut  poses.", 1),  # raw: the metric code tokenises itself
        (391895, "A *person* in a suit", 2),
        (522418, "A cat lying down", 3),
    ]
    assert len(gt["annotations"]) == 7


def test_image_ids_follow_lavis():
    assert image_id_of({"image": "x/COCO_val2014_000000391895.jpg"}, 5) == 391895
    assert image_id_of({"image": "x/COCO_val2014_000000391895.jpg", "image_id": "coco_1"}, 5) == 391895
    assert image_id_of({"image": "x/a.jpg", "image_id": 42}, 5) == 42
    assert image_id_of({"image": "x/photo.jpg"}, 5) == 5


def test_unparsable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"image": "a.jpg", ')
    with pytest.raises(ValueError, match=f"Karpathy caption file {path} is not valid json"):
        KarpathyCaptions(str(path), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="check the path"):
        KarpathyCaptions(str(tmp_path / "absent.json"), str(tmp_path))


def test_ground_truth_matches_the_shipped_corpus(data_dir):
    """The benchmark corpus ships a Karpathy test json with the ground truth made from it."""
    folder = data_dir / "benchmark_corpus" / "captioning"
    ours = karpathy_to_coco_ground_truth(folder / "coco_karpathy_test.json")
    reference = json.loads((folder / "coco_karpathy_test_gt.json").read_text())
    assert len(ours["annotations"]) == 3203
    assert ours["images"] == reference["images"] and ours["annotations"] == reference["annotations"]


def test_an_entry_without_an_image_path_is_skipped_not_fatal(tmp_path, photos, caplog):
    (tmp_path / "val2014").mkdir()
    photos["chelsea"].save(tmp_path / "val2014" / "COCO_val2014_000000522418.jpg")
    entries = [
        {"image": None, "caption": "a null path"},
        {"image": 17, "caption": "a number for a path"},
        {"caption": "no image field"},
        {"image": "val2014/COCO_val2014_000000522418.jpg", "caption": ["A cat", "A pet"]},
    ]
    path = tmp_path / "coco_karpathy_val.json"
    path.write_text(json.dumps(entries))
    dataset = KarpathyCaptions(str(path), str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="libra.data"):
        items = [dataset[i] for i in range(len(dataset))]
    assert items[:3] == [Skipped("malformed_entry", f"karpathy entry {i} of {path}") for i in range(3)]
    assert [(s.key, s.caption) for s in items[3:]] == [("522418", "a cat"), ("522418", "a pet")]
    assert "karpathy entry 0 of" in caplog.text and "None" in caplog.text
    # the ground truth leaves the same entries out, and names them
    gt = karpathy_to_coco_ground_truth(path)
    assert gt["images"] == [{"id": 522418, "file_name": "COCO_val2014_000000522418.jpg"}]
    assert [a["caption"] for a in gt["annotations"]] == ["A cat", "A pet"]


def test_an_image_root_that_is_not_there_is_a_clear_error(karpathy):
    # not 5000 missing_image skips and a validation loss over nothing
    with pytest.raises(FileNotFoundError, match=f"image root {karpathy.parent / 'coco'} is not a folder"):
        KarpathyCaptions(str(karpathy), str(karpathy.parent / "coco"))
