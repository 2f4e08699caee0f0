"""Benchmark tasks as objects built from ``conf/benchmark/*.yaml``: what to ask, in which prompt
layout, how to decode, how to post-process, how to score, and which file format the predictions are
written in.

``VQATask`` covers VQAv2 / OK-VQA (official files), TextVQA, VizWiz and GQA (their readers in
``libra.data.vqa``) and the VQAv2 test-dev submission; ``CaptionTask`` covers Karpathy-layout
caption files (COCO, Flickr30k, NoCaps); ``PopeTask`` covers POPE. Each yields ``Item``s (id, sample
builder, references) and scores predictions with the pure metric modules, so the numbers are those
of the official tools. The runner (``runner.py``) does the model side. ``train_split`` (every task) holds
the overrides of a task's config that read its training split instead; the tasks keep it for
``libra.train.baselines`` (the majority baseline), null where there is none.

``prompt_format`` says which layout a task's prompts take, so that a model is asked in the layout
it was trained on: ``chat`` (a v1 user turn holding the image and the prompt, then ``ASSISTANT:``;
instruction-tuned models, stage 2) or ``caption`` (the pretraining caption layout: the image, a
newline, then the prompt and a newline when there is one; stage-1 models and Libra-Base). A stage-1
model was trained on image, newline, caption: its caption prompt is the caption layout with an
empty prompt, exactly the part of a training sample before the caption.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from libra.benchmark.caption_metrics import score_captions
from libra.benchmark.exact_match import EXACT_MATCH_RULES
from libra.benchmark.files import (
    InputError,
    karpathy_image_id,
    load_caption_references,
    load_vqa_annotations,
    load_vqa_questions,
)
from libra.benchmark.pope import METRICS as POPE_METRICS
from libra.benchmark.pope import load_pope_questions, parse_yes_no, score_pope_splits
from libra.benchmark.vqa_accuracy import PROCESSORS, evaluate_vqa
from libra.benchmark.vqa_answers import ANSWER_NORMALIZATION
from libra.data.images import open_image_file
from libra.data.skips import Skipped, skip
from libra.data.synthetic import synthetic_dataset
from libra.data.vqa import VQAv2Questions
from libra.tokenizer.samples import CaptionSample, VQASample


@dataclass
class Item:
    """One question or image: its id, a function building the model sample (opens the image),
    the prompt text shown in tables, and the references (human answers or captions)."""

    id: Any
    make_sample: Callable[[], Any]
    prompt: str
    references: list[str]


def first_line(text: str) -> str:
    """Short-answer post-processing: the first non-empty line, stripped (chat models sometimes
    continue with an explanation)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


POSTPROCESS: dict[str, Callable[[str], str]] = {"strip": str.strip, "first_line": first_line}
PROMPT_FORMATS = ("chat", "caption")


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"benchmark task option {key}={value!r}: choose one of {sorted(choices)}")


def open_or_skip(path: Path, where: str) -> Any:
    """The image at ``path``, or a ``Skipped`` marker (counted by the runner) when it is missing or
    unreadable: one bad image costs its item a score of zero, never the benchmark."""
    try:
        return open_image_file(path)
    except FileNotFoundError:
        return skip("missing_image", where, str(path))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return skip("corrupt_image", where, str(error))


def prompt_sample(prompt_format: str, image: Any, text: str, key: str, question_id: Any = None) -> Any:
    """The generation prompt for ``image`` and ``text`` in ``prompt_format`` (see the module doc):
    a ``VQASample`` (rendered as a chat user turn) or an i2t ``CaptionSample`` with ``text`` as its
    instruction (image, newline, text, newline; image and newline alone for an empty text)."""
    if prompt_format == "chat":
        return VQASample(image, text, key if question_id is None else question_id, key=key)
    return CaptionSample(image, "", key=key, instruction=text)


@dataclass
class Decoding:
    """Generation settings of a task: greedy when ``num_beams`` is 1."""

    max_new_tokens: int = 16
    num_beams: int = 1


class VQATask:
    """Open-ended VQA. ``reader`` is a ``libra.data.vqa`` dataset (samples with human answers).

    Scoring: with ``annotations_file`` (official VQAv2/OK-VQA annotations) the question and answer
    types of the file are used; otherwise the reader's answers are scored with types "all".
    ``answer_normalization`` (``evalai`` | ``none``) is applied to every answer before it is scored
    and written: the official scorer normalises only when the human answers differ, and published
    numbers are computed on answers passed through the EvalAI answer processor first.
    ``processor`` names the scorer (``official``, ``lmms_eval_vqav2``, ..., ``lmms_eval_exact_match``
    for GQA). Without any answers (test-dev) nothing is scored and only the submission file is
    written: the official results layout ``[{"question_id", "answer"}]``, which is what EvalAI takes;
    with ``submission_questions_file`` it lists every question of that file (VQAv2: all of test2015,
    as the server requires for the test-dev phase too), "" for those not asked here.
    """

    kind = "vqa"

    def __init__(
        self,
        reader: Any,
        prompt: str = "{question}",
        prompt_format: str = "chat",
        decoding: Mapping[str, int] | None = None,
        postprocess: str = "first_line",
        processor: str = "official",
        answer_normalization: str = "evalai",
        annotations_file: str | None = None,
        submission_questions_file: str | None = None,
        max_items: int | None = None,
        batch_size: int = 8,
        train_split: Mapping[str, Any] | None = None,
    ) -> None:
        _check_choice("prompt_format", prompt_format, PROMPT_FORMATS)
        _check_choice("postprocess", postprocess, POSTPROCESS)
        _check_choice("processor", processor, {*PROCESSORS, *EXACT_MATCH_RULES})
        _check_choice("answer_normalization", answer_normalization, ANSWER_NORMALIZATION)
        if "{question}" not in prompt:
            raise ValueError(f"prompt {prompt!r} must contain '{{question}}'")
        self.reader, self.prompt, self.prompt_format, self.processor = (
            reader,
            prompt,
            prompt_format,
            processor,
        )
        self.decoding = Decoding(**(decoding or {}))
        self.postprocess = POSTPROCESS[postprocess]
        self.normalize = ANSWER_NORMALIZATION[answer_normalization]
        self.annotations_file, self.submission_questions_file = annotations_file, submission_questions_file
        self.max_items, self.batch_size = max_items, batch_size
        self.train_split = train_split

    def items(self) -> list[Item]:
        count = len(self.reader) if self.max_items is None else min(self.max_items, len(self.reader))
        return [self._item(i) for i in range(count)]

    def _item(self, index: int) -> Item:
        qid, question, _, answers = self.reader.record(index)
        prompt = self.prompt.format(question=question)

        def make_sample() -> Any:
            sample = self.reader[index]
            if isinstance(sample, Skipped):
                return sample  # a missing or corrupt image
            return prompt_sample(self.prompt_format, sample.image, prompt, sample.key, qid)

        return Item(qid, make_sample, prompt, list(answers))

    def scored(self, items: Sequence[Item]) -> bool:
        """Whether there is anything to score against (False for test-dev)."""
        return self.annotations_file is not None or any(item.references for item in items)

    def annotations(self, items: Sequence[Item]) -> list[dict[str, Any]] | None:
        """Official-layout annotations of the evaluated questions (None when there are no answers)."""
        if self.annotations_file is not None:
            wanted = {item.id for item in items}
            return [a for a in load_vqa_annotations(self.annotations_file) if a["question_id"] in wanted]
        if not any(item.references for item in items):
            return None
        return [
            {
                "question_id": item.id,
                "question_type": "all",
                "answer_type": "all",
                "multiple_choice_answer": item.references[0] if item.references else "",
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(item.references)],
            }
            for item in items
        ]

    def score(self, items: Sequence[Item], predictions: Mapping[Any, str]) -> tuple[dict, dict[Any, float]]:
        """(metrics json as the CLI prints it, per-question score in [0, 1]); ({}, {}) unscored."""
        annotations = self.annotations(items)
        if annotations is None:
            return {}, {}
        answers = {qid: self.normalize(text) for qid, text in predictions.items()}
        result = evaluate_vqa(annotations, answers, processor=self.processor)
        return result.to_json(), result.per_question

    @staticmethod
    def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
        return {"accuracy": metrics["unrounded"]["overall"]} if metrics else {}

    def predictions_json(self, predictions: Mapping[Any, str]) -> list[dict[str, Any]]:
        """The results file: the normalised answers, so that scoring it with the official tool (or
        uploading it) gives this task's number."""
        answers = {qid: self.normalize(text) for qid, text in predictions.items()}
        if self.submission_questions_file is None:
            return [{"question_id": qid, "answer": answer} for qid, answer in answers.items()]
        ids = list(load_vqa_questions(self.submission_questions_file))
        unknown = set(answers) - set(ids)
        if unknown:
            raise InputError(
                f"submission_questions_file {self.submission_questions_file}: lacks {len(unknown)} "
                f"asked question(s), e.g. {sorted(unknown, key=str)[:5]}; name the file that holds "
                "every question of the reader's questions_file (test2015 for test-dev)"
            )
        return [{"question_id": qid, "answer": answers.get(qid, "")} for qid in ids]


class CaptionTask:
    """Image captioning on a Karpathy-layout file (``[{"image", "caption": [refs]}]``); scored with
    pycocoevalcap's metrics. ``prompt_format`` picks the layout of ``prompt`` (see the module doc);
    a stage-1 model is asked with ``prompt_format: caption`` and an empty ``prompt``."""

    kind = "caption"

    def __init__(
        self,
        annotation_file: str,
        image_root: str,
        prompt: str = "Describe the image briefly.",
        prompt_format: str = "chat",
        decoding: Mapping[str, int] | None = None,
        postprocess: str = "strip",
        metrics: Sequence[str] = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE"),
        max_items: int | None = None,
        batch_size: int = 8,
        train_split: Mapping[str, Any] | None = None,
    ) -> None:
        _check_choice("prompt_format", prompt_format, PROMPT_FORMATS)
        _check_choice("postprocess", postprocess, POSTPROCESS)
        self.annotation_file, self.image_root = annotation_file, Path(image_root)
        self.prompt, self.prompt_format, self.metrics = prompt, prompt_format, list(metrics)
        self.decoding = Decoding(**(decoding or {}))
        self.postprocess = POSTPROCESS[postprocess]
        self.max_items, self.batch_size = max_items, batch_size
        self.train_split = train_split

    def items(self) -> list[Item]:
        references = load_caption_references(self.annotation_file)
        with open(self.annotation_file, encoding="utf-8") as f:
            entries = json.load(f)
        files: dict[Any, str] = {}
        for entry in entries:
            files.setdefault(karpathy_image_id(entry), entry["image"])
        ids = list(references)[: self.max_items]
        return [Item(i, self._sample_maker(i, files[i]), self.prompt, references[i]) for i in ids]

    def _sample_maker(self, image_id: Any, relative: str) -> Callable[[], Any]:
        def make_sample() -> Any:
            image = open_or_skip(self.image_root / relative, f"image {image_id} of {self.annotation_file}")
            if isinstance(image, Skipped):
                return image
            return prompt_sample(self.prompt_format, image, self.prompt, str(image_id), image_id)

        return make_sample

    @staticmethod
    def scored(items: Sequence[Item]) -> bool:
        return True

    def score(self, items: Sequence[Item], predictions: Mapping[Any, str]) -> tuple[dict, dict[Any, float]]:
        references = {item.id: item.references for item in items}
        result = score_captions(references, predictions, metrics=self.metrics)
        return result.to_json(), {i: s.get("CIDEr", 0.0) for i, s in result.per_image.items()}

    @staticmethod
    def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
        keys = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
        return {k: metrics[k] for k in keys if metrics.get(k) is not None}

    @staticmethod
    def predictions_json(predictions: Mapping[Any, str]) -> list[dict[str, Any]]:
        return [{"image_id": image_id, "caption": caption} for image_id, caption in predictions.items()]


class PopeTask:
    """POPE object hallucination: "Is there a <object> in the image?" on COCO val2014, one file per
    split (``question_files``: split name -> the reference's json-lines file). Answers are read as
    yes/no the reference's way (``libra.benchmark.pope``) and scored per split (accuracy,
    precision, recall, F1, yes-ratio as fractions; "yes" is the positive class), plus their mean
    over the splits. ``max_items`` caps each split. The postprocess default, ``strip``, leaves the
    answer whole, as the reference reads it."""

    kind = "pope"

    def __init__(
        self,
        question_files: Mapping[str, str],
        image_root: str,
        prompt: str = "{question}",
        prompt_format: str = "chat",
        decoding: Mapping[str, int] | None = None,
        postprocess: str = "strip",
        max_items: int | None = None,
        batch_size: int = 8,
        train_split: Mapping[str, Any] | None = None,
    ) -> None:
        _check_choice("prompt_format", prompt_format, PROMPT_FORMATS)
        _check_choice("postprocess", postprocess, POSTPROCESS)
        if not question_files:
            raise ValueError("question_files: name at least one POPE split file (split: path)")
        bad = [split for split in question_files if "/" in split]
        if bad:
            raise ValueError(f"question_files: split names may not contain '/': {bad}")
        if "{question}" not in prompt:
            raise ValueError(f"prompt {prompt!r} must contain '{{question}}'")
        self.question_files = dict(question_files)
        self.image_root, self.prompt, self.prompt_format = Path(image_root), prompt, prompt_format
        self.decoding = Decoding(**(decoding or {}))
        self.postprocess = POSTPROCESS[postprocess]
        self.max_items, self.batch_size = max_items, batch_size
        self.train_split = train_split
        self._questions: dict[str, tuple[str, Any]] = {}  # item id -> (split, POPE question id)

    def items(self) -> list[Item]:
        items = []
        for split, path in self.question_files.items():
            for record in load_pope_questions(path)[: self.max_items]:
                item_id = f"{split}/{record['question_id']}"  # ids repeat across the splits
                self._questions[item_id] = (split, record["question_id"])
                prompt = self.prompt.format(question=record["text"])
                where = f"question {record['question_id']} of {path}"
                items.append(
                    Item(
                        item_id, self._sample_maker(record["image"], prompt, where), prompt, [record["label"]]
                    )
                )
        return items

    def _sample_maker(self, image_file: str, prompt: str, where: str) -> Callable[[], Any]:
        def make_sample() -> Any:
            image = open_or_skip(self.image_root / image_file, where)
            if isinstance(image, Skipped):
                return image
            return prompt_sample(self.prompt_format, image, prompt, where)

        return make_sample

    @staticmethod
    def scored(items: Sequence[Item]) -> bool:
        return True

    def score(self, items: Sequence[Item], predictions: Mapping[Any, str]) -> tuple[dict, dict[Any, float]]:
        labels: dict[str, list[str]] = {split: [] for split in self.question_files}
        answers: dict[str, list[str]] = {split: [] for split in self.question_files}
        for item in items:
            split = self._questions[item.id][0]
            labels[split].append(item.references[0])
            answers[split].append(predictions[item.id])
        splits = [split for split in self.question_files if labels[split]]
        metrics = score_pope_splits({s: labels[s] for s in splits}, {s: answers[s] for s in splits})
        per_item = {
            item.id: float(parse_yes_no(predictions[item.id]) == item.references[0]) for item in items
        }
        return metrics, per_item

    @staticmethod
    def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
        """``<split>/<metric>`` for every split and ``mean/<metric>`` (logged as
        ``benchmark/pope/random/f1``, ...)."""
        return {f"{split}/{m}": float(values[m]) for split, values in metrics.items() for m in POPE_METRICS}

    def predictions_json(self, predictions: Mapping[Any, str]) -> list[dict[str, Any]]:
        """One line per question: split, POPE question id, the model's text and the yes/no read from it."""
        rows = []
        for item_id, text in predictions.items():
            split, question_id = self._questions[item_id]
            rows.append(
                {"split": split, "question_id": question_id, "text": text, "answer": parse_yes_no(text)}
            )
        return rows


# ------------------------------------------------------------------ the synthetic set's tasks


def synthetic_vqa_task(
    cache_dir: str, generator: Mapping[str, Any], split: str = "test", **task: Any
) -> VQATask:
    """VQA on a split of the synthetic shapes set (generated into ``cache_dir`` if needed)."""
    layout = synthetic_dataset(cache_dir, **dict(generator))
    reader = VQAv2Questions(
        str(layout.vqa_questions_file(split)),
        str(layout.image_root),
        str(layout.vqa_annotations_file(split)),
        image_name=layout.vqa_image_name(split),
    )
    return VQATask(reader, annotations_file=str(layout.vqa_annotations_file(split)), **task)


def synthetic_caption_task(
    cache_dir: str, generator: Mapping[str, Any], split: str = "test", **task: Any
) -> CaptionTask:
    """Captioning on a split of the synthetic shapes set (generated into ``cache_dir`` if needed)."""
    layout = synthetic_dataset(cache_dir, **dict(generator))
    return CaptionTask(str(layout.karpathy_file(split)), str(layout.image_root), **task)
