"""VQA question files: VQAv2 / OK-VQA layout, TextVQA, VizWiz and GQA."""

from __future__ import annotations

import json

import pytest

from libra.data.skips import Skipped
from libra.data.vqa import GQAQuestions, TextVQAQuestions, VizWizQuestions, VQAv2Questions
from libra.tokenizer.samples import VQASample


@pytest.fixture
def image_root(tmp_path, photos):
    photos["astronaut"].save(tmp_path / "COCO_val2014_000000000042.jpg")
    photos["chelsea"].save(tmp_path / "abc123.jpg")
    photos["coffee"].save(tmp_path / "VizWiz_val_00000007.jpg")
    return tmp_path


def test_vqav2_questions_with_ten_answers(image_root):
    questions = {
        "questions": [
            {"image_id": 42, "question": "What is the person wearing?", "question_id": 420},
            {"image_id": 42, "question": "Is it space?", "question_id": 421},
            {"image_id": 7, "question": "Where is the picture?", "question_id": 70},
            {"question": "no image id", "question_id": 71},
        ]
    }
    answers = ["suit"] * 8 + ["spacesuit", "white suit"]
    annotations = {
        "annotations": [
            {
                "question_id": 420,
                "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers, 1)],
            },
            {"question_id": 421, "answers": [{"answer": "yes", "answer_id": i} for i in range(1, 11)]},
        ]
    }
    (image_root / "q.json").write_text(json.dumps(questions))
    (image_root / "a.json").write_text(json.dumps(annotations))
    dataset = VQAv2Questions(str(image_root / "q.json"), str(image_root), str(image_root / "a.json"))
    assert dataset.question_ids == [420, 421, 70]  # the entry without an image id is skipped at load
    first = dataset[0]
    assert isinstance(first, VQASample)
    assert (first.question, first.question_id, first.answers, first.key) == (
        "What is the person wearing?",
        420,
        answers,
        "420",
    )
    assert dataset[1].answers == ["yes"] * 10
    missing = dataset[2]
    assert isinstance(missing, Skipped) and missing.reason == "missing_image"
    assert missing.where == f"question 70 of {image_root / 'q.json'}"
    # without annotations (test-dev): no answers
    assert VQAv2Questions(str(image_root / "q.json"), str(image_root))[0].answers == []


def test_textvqa_vizwiz_gqa_layouts(image_root):
    (image_root / "textvqa.json").write_text(
        json.dumps(
            {
                "data": [
                    {
                        "question_id": 5,
                        "question": "What does it say?",
                        "image_id": "abc123",
                        "answers": ["cat"] * 10,
                    }
                ]
            }
        )
    )
    (image_root / "vizwiz.json").write_text(
        json.dumps(
            [
                {
                    "image": "VizWiz_val_00000007.jpg",
                    "question": "What is this?",
                    "answers": [{"answer": "coffee", "answer_confidence": "yes"}] * 10,
                }
            ]
        )
    )
    (image_root / "gqa.json").write_text(
        json.dumps({"201": {"imageId": "abc123", "question": "Is it a cat?", "answer": "yes"}})
    )
    textvqa = TextVQAQuestions(str(image_root / "textvqa.json"), str(image_root))[0]
    vizwiz = VizWizQuestions(str(image_root / "vizwiz.json"), str(image_root))[0]
    gqa = GQAQuestions(str(image_root / "gqa.json"), str(image_root))[0]
    assert (textvqa.question_id, textvqa.answers[0], textvqa.image.size) == (5, "cat", (160, 106))
    assert (vizwiz.question_id, vizwiz.answers) == ("VizWiz_val_00000007.jpg", ["coffee"] * 10)
    assert (gqa.question_id, gqa.question, gqa.answers) == ("201", "Is it a cat?", ["yes"])


def test_wrong_layout_is_a_clear_error(image_root):
    (image_root / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="must hold a json object keyed by question id"):
        GQAQuestions(str(image_root / "list.json"), str(image_root))
    with pytest.raises(ValueError, match="has no 'questions' list"):
        VQAv2Questions(str(image_root / "list.json"), str(image_root))


def test_reads_the_shipped_vqa_corpus(data_dir):
    folder = data_dir / "benchmark_corpus" / "vqa"
    dataset = VQAv2Questions(
        str(folder / "OpenEnded_mscoco_hidden_questions.json"),
        str(folder),
        str(folder / "mscoco_hidden_annotations.json"),
    )
    assert len(dataset) == 1017 and dataset.question_ids[:2] == [370058000, 370058001]
    skipped = dataset[0]  # the corpus has no images: the question is skipped, named by its id
    assert isinstance(skipped, Skipped) and skipped.where.startswith("question 370058000 of ")
    assert skipped.reason == "missing_image"
    record = dataset.record(0)
    assert record[2] == "COCO_val2014_000000370058.jpg" and len(record[3]) == 10
