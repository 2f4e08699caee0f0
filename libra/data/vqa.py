"""Visual question files in the layouts the benchmarks ship: VQAv2 (and OK-VQA, which uses the same
layout), TextVQA, VizWiz and GQA — all read into ``VQASample``s with their human answers.

Each class only parses its layout into records (question id, question, image file, answers);
image opening, skipping and counting are shared. Scoring uses the answers as they are stored
(10 per question for VQAv2 / OK-VQA / TextVQA / VizWiz, one for GQA).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from libra.tokenizer.samples import VQASample

from .images import IMAGE_ERRORS, image_fault, open_image_file, preprocess
from .json_records import PackedRecords, read_annotation_json
from .skips import Skipped, skip

Record = tuple[int | str, str, str, list[str]]  # question id, question, image file, answers


class _QuestionFile(Dataset):
    """Shared reading of parsed records; subclasses provide ``records`` from their layout."""

    def __init__(
        self,
        records: list[Record],
        image_root: str,
        image_transform: Callable[[Image.Image], Any] | None,
        source: str,
    ):
        self.image_root, self.image_transform, self.source = Path(image_root), image_transform, source
        self._records = PackedRecords(records)
        self.question_ids = [record[0] for record in records]

    def __len__(self) -> int:
        return len(self._records)

    def record(self, index: int) -> Record:
        """(question id, question, image file, answers) without opening the image, e.g. to count
        answers for a most-frequent-answer baseline."""
        return tuple(self._records[index])

    def __getitem__(self, index: int) -> VQASample | Skipped:
        question_id, question, image_file, answers = self.record(index)
        where = f"question {question_id} of {self.source}"
        try:
            image = open_image_file(self.image_root / image_file)
        except FileNotFoundError:
            return skip("missing_image", where, str(self.image_root / image_file))
        except IMAGE_ERRORS as error:
            return skip(image_fault(error), where, str(error))
        pixels = preprocess(self.image_transform, image, where)
        if isinstance(pixels, Skipped):
            return pixels
        return VQASample(pixels, question, question_id, answers, key=str(question_id))


class VQAv2Questions(_QuestionFile):
    """Official VQAv2 / OK-VQA files: ``{"questions": [{"image_id", "question", "question_id"}]}`` and,
    when answers are known, ``{"annotations": [{"question_id", "answers": [{"answer"}, ...]}]}``.
    ``image_name`` turns an image id into a file name under ``image_root``."""

    def __init__(
        self,
        questions_file: str,
        image_root: str,
        annotations_file: str | None = None,
        image_name: str = "COCO_val2014_{image_id:012d}.jpg",
        image_transform: Callable[[Image.Image], Any] | None = None,
    ):
        questions = _list_field(read_annotation_json(questions_file, "VQA questions"), "questions")
        if questions is None:
            raise ValueError(f"VQA questions file {questions_file} has no 'questions' list")
        answers: dict[int, list[str]] = {}
        if annotations_file is not None:
            loaded = read_annotation_json(annotations_file, "VQA annotations")
            annotations = _list_field(loaded, "annotations")
            if annotations is None:
                raise ValueError(f"VQA annotations file {annotations_file} has no 'annotations' list")
            answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations}
        records = []
        for position, question in enumerate(questions):
            try:
                qid = question["question_id"]
                image = image_name.format(image_id=question["image_id"])
                records.append((qid, question["question"], image, answers.get(qid, [])))
            except (KeyError, TypeError, ValueError) as error:
                skip("malformed_entry", f"question {position} of {questions_file}", repr(error))
        super().__init__(records, image_root, image_transform, str(questions_file))


class TextVQAQuestions(_QuestionFile):
    """TextVQA 0.5.1: ``{"data": [{"question_id", "question", "image_id", "answers": [str] * 10}]}``."""

    def __init__(
        self,
        annotation_file: str,
        image_root: str,
        image_name: str = "{image_id}.jpg",
        image_transform: Callable[[Image.Image], Any] | None = None,
    ):
        data = _list_field(read_annotation_json(annotation_file, "TextVQA"), "data")
        if data is None:
            raise ValueError(f"TextVQA file {annotation_file} has no 'data' list")
        records = [
            (d["question_id"], d["question"], image_name.format(image_id=d["image_id"]), d.get("answers", []))
            for d in data
        ]
        super().__init__(records, image_root, image_transform, str(annotation_file))


class VizWizQuestions(_QuestionFile):
    """VizWiz: a list of ``{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer"}]}``;
    the image file name is the question id, as VizWiz result files use it."""

    def __init__(
        self,
        annotation_file: str,
        image_root: str,
        image_transform: Callable[[Image.Image], Any] | None = None,
    ):
        data = read_annotation_json(annotation_file, "VizWiz")
        if not isinstance(data, list):
            raise ValueError(f"VizWiz file {annotation_file} must hold a json list")
        records = [
            (d["image"], d["question"], d["image"], [a["answer"] for a in d.get("answers", [])]) for d in data
        ]
        super().__init__(records, image_root, image_transform, str(annotation_file))


class GQAQuestions(_QuestionFile):
    """GQA balanced questions: ``{question_id: {"imageId", "question", "answer"}}`` — one answer each."""

    def __init__(
        self,
        questions_file: str,
        image_root: str,
        image_name: str = "{image_id}.jpg",
        image_transform: Callable[[Image.Image], Any] | None = None,
    ):
        data = read_annotation_json(questions_file, "GQA questions")
        if not isinstance(data, dict):
            raise ValueError(
                f"GQA questions file {questions_file} must hold a json object keyed by question id"
            )
        records = [
            (
                qid,
                q["question"],
                image_name.format(image_id=q["imageId"]),
                [q["answer"]] if "answer" in q else [],
            )
            for qid, q in data.items()
        ]
        super().__init__(records, image_root, image_transform, str(questions_file))


def _list_field(content: Any, name: str) -> list | None:
    """``content[name]`` when the file is an object holding that list, else None."""
    value = content.get(name) if isinstance(content, dict) else None
    return value if isinstance(value, list) else None
