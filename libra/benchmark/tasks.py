"""Benchmark tasks as objects built from ``conf/benchmark/*.yaml``: what to ask, how to decode,
how to post-process, how to score, and which file format the predictions are written in.

``VQATask`` covers VQAv2 / OK-VQA (official files), TextVQA, VizWiz and GQA (their readers in
``libra.data.vqa``); ``CaptionTask`` covers Karpathy-layout caption files (COCO, Flickr30k, NoCaps).
Each yields ``Item``s (id, sample builder, references) and scores predictions with the pure metric
modules, so the numbers are those of the official tools. The runner (``runner.py``) does the model
side.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra.benchmark.caption_metrics import score_captions
from libra.benchmark.files import karpathy_image_id, load_caption_references, load_vqa_annotations
from libra.benchmark.vqa_accuracy import evaluate_vqa
from libra.data.images import open_image_file
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


@dataclass
class Decoding:
    """Generation settings of a task: greedy when ``num_beams`` is 1."""

    max_new_tokens: int = 16
    num_beams: int = 1


class VQATask:
    """Open-ended VQA. ``reader`` is a ``libra.data.vqa`` dataset (samples with human answers).

    Scoring: with ``annotations_file`` (official VQAv2/OK-VQA annotations) the question and answer
    types of the file are used; otherwise the reader's answers are scored with types "all".
    ``processor`` names the answer processing (``official``, ``lmms_eval_vqav2``, ...,
    ``lmms_eval_exact_match`` for GQA). Without any answers (test-dev) nothing is scored and only
    the submission file is written: the official results layout ``[{"question_id", "answer"}]``,
    which is what EvalAI takes.
    """

    kind = "vqa"

    def __init__(
        self,
        reader: Any,
        prompt: str = "{question}",
        decoding: Mapping[str, int] | None = None,
        postprocess: str = "first_line",
        processor: str = "official",
        annotations_file: str | None = None,
        max_items: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess {postprocess!r}: choose one of {sorted(POSTPROCESS)}")
        if "{question}" not in prompt:
            raise ValueError(f"prompt {prompt!r} must contain '{{question}}'")
        self.reader, self.prompt, self.processor = reader, prompt, processor
        self.decoding = Decoding(**(decoding or {}))
        self.postprocess = POSTPROCESS[postprocess]
        self.annotations_file, self.max_items, self.batch_size = annotations_file, max_items, batch_size

    def items(self) -> list[Item]:
        count = len(self.reader) if self.max_items is None else min(self.max_items, len(self.reader))
        return [self._item(i) for i in range(count)]

    def _item(self, index: int) -> Item:
        qid, question, _, answers = self.reader.record(index)
        prompt = self.prompt.format(question=question)

        def make_sample() -> Any:
            sample = self.reader[index]
            if isinstance(sample, VQASample):
                sample.question = prompt
            return sample  # a Skipped marker for a missing or corrupt image

        return Item(qid, make_sample, prompt, list(answers))

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
        result = evaluate_vqa(annotations, predictions, processor=self.processor)
        return result.to_json(), result.per_question

    @staticmethod
    def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
        return {"accuracy": metrics["unrounded"]["overall"]} if metrics else {}

    @staticmethod
    def predictions_json(predictions: Mapping[Any, str]) -> list[dict[str, Any]]:
        return [{"question_id": qid, "answer": answer} for qid, answer in predictions.items()]


class CaptionTask:
    """Image captioning on a Karpathy-layout file (``[{"image", "caption": [refs]}]``); scored with
    pycocoevalcap's metrics. ``format`` picks the prompt: ``chat`` (a user turn holding the image
    and ``prompt``, for instruction-tuned models) or ``caption`` (image then ``prompt``, the
    pretraining layout of Libra-Base)."""

    kind = "caption"

    def __init__(
        self,
        annotation_file: str,
        image_root: str,
        prompt: str = "Describe the image briefly.",
        format: str = "chat",
        decoding: Mapping[str, int] | None = None,
        postprocess: str = "strip",
        metrics: Sequence[str] = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE"),
        max_items: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if format not in ("chat", "caption"):
            raise ValueError(f"format {format!r}: choose 'chat' or 'caption'")
        if postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess {postprocess!r}: choose one of {sorted(POSTPROCESS)}")
        self.annotation_file, self.image_root = annotation_file, Path(image_root)
        self.prompt, self.format, self.metrics = prompt, format, list(metrics)
        self.decoding = Decoding(**(decoding or {}))
        self.postprocess = POSTPROCESS[postprocess]
        self.max_items, self.batch_size = max_items, batch_size

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
            image = open_image_file(self.image_root / relative)
            if self.format == "chat":
                return VQASample(image, self.prompt, image_id, key=str(image_id))
            return CaptionSample(image, "", key=str(image_id), instruction=self.prompt)

        return make_sample

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
