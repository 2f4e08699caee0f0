"""Reading the official file formats, with errors that name the file, the key and the fix.

- VQA (GT-Vision-Lab/VQA layout): questions ``{"questions": [...], info, task_type, data_type,
  data_subtype, license}``, annotations ``{"annotations": [...]}``, results
  ``[{"question_id", "answer"}]``. As the official ``loadRes`` asserts, the result ids must equal
  the annotation ids; here a mismatch is an ``InputError`` naming the missing and extra ids.
- Captions: ground truth in COCO format ``{"images": [{"id"}], "annotations": [{"image_id",
  "caption"}]}`` or the Karpathy layout of BLIP/LAVIS ``[{"image": ".../COCO_val2014_<id>.jpg",
  "caption": [...]}]``; results ``[{"image_id", "caption"}]``, exactly one per image.

Pure Python; imports nothing of libra outside this package.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from libra.benchmark.gc_pause import gc_paused

try:  # 3-5x faster parsing of large annotation files; same values
    import orjson
except ImportError:  # pragma: no cover - optional speed-up
    orjson = None


class InputError(ValueError):
    """Bad benchmark input; the message names the file or key and says how to fix it."""


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    with gc_paused():  # parsing creates no reference cycles
        if orjson is not None:
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass  # NaN literals, huge integers ...: let the standard parser decide
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not valid JSON ({err})") from err


def _require(obj: Any, keys: Iterable[str], where: str, fix: str) -> None:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}; {fix}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise InputError(f"{where}: missing key(s) {missing}; {fix}")


def _id_mismatch(what: str, missing: set, extra: set, path: str | Path) -> InputError:
    def show(ids: set) -> str:
        ids = sorted(ids, key=str)
        more = f" ... (+{len(ids) - 20} more)" if len(ids) > 20 else ""
        return ", ".join(map(str, ids[:20])) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {show(missing)}")
    if extra:
        parts.append(f"{len(extra)} extra (not in the ground truth): {show(extra)}")
    return InputError(f"{path}: {what} ids differ from the ground truth; " + "; ".join(parts))


# ---------------------------------------------------------------------------------------- VQA


def load_vqa_annotations(path: str | Path) -> list[dict[str, Any]]:
    data = read_json(path)
    fix = "use the official VQA annotation file (mscoco_*_annotations.json)"
    _require(data, ["annotations"], str(path), fix)
    annotations = data["annotations"]
    # One cheap pass over the questions; the answer dicts are checked when scoring trips on one
    # (check_vqa_answers), so a well-formed file pays nothing for it.
    if not all(
        isinstance(a, dict)
        and "question_id" in a
        and "answers" in a
        and "question_type" in a
        and "answer_type" in a
        for a in annotations
    ):
        for i, ann in enumerate(annotations):
            _require(
                ann,
                ["question_id", "answers", "question_type", "answer_type"],
                f"{path}: annotations[{i}]",
                fix,
            )
    return data["annotations"]


def check_vqa_answers(annotations: list[dict[str, Any]], path: str | Path) -> None:
    """Name the first malformed human answer (called when scoring failed on one)."""
    fix = 'each annotation needs "answers": [{"answer": str, ...}, ...]'
    for i, ann in enumerate(annotations):
        if not isinstance(ann["answers"], list):
            raise InputError(f"{path}: annotations[{i}].answers must be a list; {fix}")
        for j, answer in enumerate(ann["answers"]):
            _require(answer, ["answer"], f"{path}: annotations[{i}].answers[{j}]", fix)
            if not isinstance(answer["answer"], str):
                raise InputError(f"{path}: annotations[{i}].answers[{j}].answer must be a string; {fix}")


def load_vqa_questions(path: str | Path) -> dict[Any, dict[str, Any]]:
    """Question id -> question entry. The five header keys the official ``loadRes`` copies are
    required as well, so a file that works here works with the official code."""
    data = read_json(path)
    fix = "use the official VQA question file (OpenEnded_mscoco_*_questions.json)"
    _require(data, ["questions", "info", "task_type", "data_type", "data_subtype", "license"], str(path), fix)
    if not all(isinstance(q, dict) and "question_id" in q for q in data["questions"]):
        for i, q in enumerate(data["questions"]):
            _require(q, ["question_id"], f"{path}: questions[{i}]", fix)
    return {q["question_id"]: q for q in data["questions"]}


def load_vqa_results(path: str | Path, annotations: list[dict[str, Any]]) -> dict[Any, str]:
    """Question id -> predicted answer; the ids must equal the annotation ids. A duplicated id
    keeps its last answer, as the official loader does."""
    data = read_json(path)
    fix = 'write a JSON list of {"question_id": int, "answer": str}'
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of results; {fix}")
    if not all(isinstance(r, dict) and "question_id" in r and isinstance(r.get("answer"), str) for r in data):
        for i, r in enumerate(data):
            _require(r, ["question_id", "answer"], f"{path}: [{i}]", fix)
            if not isinstance(r["answer"], str):
                raise InputError(f"{path}: [{i}].answer must be a string, got {type(r['answer']).__name__}")
    predictions = {r["question_id"]: r["answer"] for r in data}
    truth = {a["question_id"] for a in annotations}
    if set(predictions) != truth:
        raise _id_mismatch("question", truth - set(predictions), set(predictions) - truth, path)
    return predictions


def check_questions_cover(
    questions: dict[Any, Any], annotations: list[dict[str, Any]], path: str | Path
) -> None:
    missing = {a["question_id"] for a in annotations} - set(questions)
    if missing:
        raise _id_mismatch("question", missing, set(), path)


# ----------------------------------------------------------------------------------- captions


def karpathy_image_id(entry: dict[str, Any]) -> int:
    """Image id of a Karpathy-layout entry: ``image_id`` when given, else the number at the end
    of the file name (``val2014/COCO_val2014_000000391895.jpg`` -> 391895), as BLIP/LAVIS do."""
    if "image_id" in entry:
        return entry["image_id"]
    stem = Path(entry["image"]).stem
    try:
        return int(stem.rsplit("_", 1)[-1])
    except ValueError as err:
        raise InputError(f"cannot read an image id from {entry['image']!r}; add an 'image_id' key") from err


def load_caption_references(path: str | Path) -> dict[Any, list[str]]:
    """Image id -> raw reference captions, in ground-truth image order."""
    data = read_json(path)
    refs: dict[Any, list[str]] = {}
    if isinstance(data, list):  # Karpathy layout
        for i, entry in enumerate(data):
            _require(
                entry, ["image", "caption"], f"{path}: [{i}]", "Karpathy entries need 'image' and 'caption'"
            )
            captions = entry["caption"]
            refs.setdefault(karpathy_image_id(entry), []).extend(
                [captions] if isinstance(captions, str) else captions
            )
    else:
        fix = 'use COCO caption format {"images": [{"id"}], "annotations": [{"image_id", "caption"}]}'
        _require(data, ["images", "annotations"], str(path), fix)
        refs = {img["id"]: [] for img in data["images"]}
        for i, ann in enumerate(data["annotations"]):
            _require(ann, ["image_id", "caption"], f"{path}: annotations[{i}]", fix)
            if ann["image_id"] not in refs:
                raise InputError(
                    f"{path}: annotations[{i}] refers to image {ann['image_id']} absent from 'images'"
                )
            refs[ann["image_id"]].append(ann["caption"])
    empty = [i for i, r in refs.items() if not r]
    if empty:
        raise InputError(f"{path}: images without reference captions: {empty[:20]}")
    return refs


def load_caption_results(path: str | Path, references: dict[Any, list[str]]) -> dict[Any, str]:
    """Image id -> candidate caption; exactly one per ground-truth image."""
    data = read_json(path)
    fix = 'write a JSON list of {"image_id": int, "caption": str}, one per image'
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of results; {fix}")
    candidates: dict[Any, str] = {}
    duplicates = set()
    for i, r in enumerate(data):
        _require(r, ["image_id", "caption"], f"{path}: [{i}]", fix)
        if r["image_id"] in candidates:
            duplicates.add(r["image_id"])
        candidates[r["image_id"]] = r["caption"]
    if duplicates:
        raise InputError(f"{path}: several captions for image(s) {sorted(duplicates, key=str)[:20]}; {fix}")
    if set(candidates) != set(references):
        raise _id_mismatch(
            "image", set(references) - set(candidates), set(candidates) - set(references), path
        )
    return candidates
