"""Two trivial baselines that the tiny run must beat by a margin: proof that the model looks at images.

* VQA: answer every question with the most frequent answer of the training questions.
* Captioning: give every image the most frequent training caption.

Both are scored with the benchmark's own metric code on exactly the evaluated items, so the numbers
sit next to the model's in `metrics.json` like for like.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from libra.benchmark.caption_metrics import score_captions
from libra.benchmark.files import load_caption_references, load_vqa_annotations
from libra.benchmark.vqa_accuracy import evaluate_vqa


def most_frequent(values: Iterable[str]) -> str:
    """The commonest value; ties go to the alphabetically first, so the baseline is deterministic."""
    counts = Counter(values)
    if not counts:
        raise ValueError("most_frequent: no values")
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def vqa_majority_baseline(
    train_annotations_file: str, eval_annotations: Sequence[Mapping[str, Any]], processor: str = "official"
) -> tuple[str, float]:
    """(answer, accuracy x100) of always giving the most frequent training answer."""
    answer = most_frequent(a["multiple_choice_answer"] for a in load_vqa_annotations(train_annotations_file))
    result = evaluate_vqa(eval_annotations, {a["question_id"]: answer for a in eval_annotations}, processor)
    return answer, result.overall_unrounded


def caption_majority_baseline(
    train_captions_file: str, references: Mapping[Any, Sequence[str]], metrics: Sequence[str]
) -> tuple[str, dict[str, float]]:
    """(caption, scores) of always giving the most frequent training caption."""
    train = load_caption_references(train_captions_file)
    caption = most_frequent(c for captions in train.values() for c in captions)
    result = score_captions(references, {image: caption for image in references}, metrics=metrics)
    return caption, {k: v for k, v in result.overall.items() if v is not None}
