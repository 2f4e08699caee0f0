"""POPE (object hallucination): reading its question files, parsing yes/no answers, and its scores.

The files are the POPE reference's ``coco_pope_{random,popular,adversarial}.json``: despite the
name, JSON lines, one ``{"question_id", "image", "text", "label"}`` per line ("Is there a dog in
the image?", label "yes" or "no"), 3,000 questions on 500 COCO val2014 images per split.

Parsing and scoring follow the reference evaluation (RUCAIBox/POPE ``evaluate.py``, copied by
LLaVA's ``eval_pope.py``) to the letter: keep the text before the first ``.``, delete commas, split
on single spaces, and the answer is "no" when a word is exactly ``No``, ``no`` or ``not``, "yes"
otherwise (an empty answer counts as "yes"). "yes" is the positive class. Pure Python; imports
nothing of libra outside libra.benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra.benchmark.files import InputError

SPLITS = ("random", "popular", "adversarial")
NEGATIONS = frozenset({"No", "not", "no"})
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def parse_yes_no(text: str) -> str:
    """ "yes" or "no", as the reference reads a model's answer."""
    if "." in text:
        text = text.split(".")[0]  # only the first sentence
    words = text.replace(",", "").split(" ")
    return "no" if NEGATIONS.intersection(words) else "yes"


@dataclass(frozen=True)
class PopeScores:
    """Counts with "yes" as the positive class, and the reference's five numbers (fractions).

    Precision is 0 when nothing was answered "yes" (and F1 0 when precision and recall are both 0),
    where the reference divides by zero."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.total

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def yes_ratio(self) -> float:
        return (self.tp + self.fp) / self.total

    def to_json(self) -> dict[str, float | int]:
        counts = {"TP": self.tp, "FP": self.fp, "TN": self.tn, "FN": self.fn, "n": self.total}
        return {**{name: getattr(self, name) for name in METRICS}, **counts}


def score_pope(labels: Iterable[str], answers: Iterable[str]) -> PopeScores:
    """Scores of raw model ``answers`` against the ``labels`` ("yes"/"no"), pair by pair. A label
    other than "no" counts as "yes", as in the reference."""
    tp = fp = tn = fn = 0
    n = 0
    for label, answer in zip(labels, answers, strict=True):
        n += 1
        is_yes = label != "no"
        if parse_yes_no(answer) == "yes":
            tp, fp = tp + is_yes, fp + (not is_yes)
        else:
            fn, tn = fn + is_yes, tn + (not is_yes)
    if n == 0:
        raise ValueError("POPE: no questions to score")
    return PopeScores(tp, fp, tn, fn)


def load_pope_questions(path: str | Path) -> list[dict[str, Any]]:
    """The records of one POPE file, in file order; every line needs question_id, image, text, label."""
    fix = 'each line of a POPE file is {"question_id", "image", "text", "label": "yes"|"no"}'
    records, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not valid JSON ({err}); {fix}") from err
            missing = [k for k in ("question_id", "image", "text", "label") if k not in record]
            if missing:
                raise InputError(f"{path}:{number}: missing key(s) {missing}; {fix}")
            if record["label"] not in ("yes", "no"):
                raise InputError(f"{path}:{number}: label {record['label']!r} is not 'yes' or 'no'")
            if record["question_id"] in seen:
                raise InputError(f"{path}:{number}: question_id {record['question_id']} appears twice")
            seen.add(record["question_id"])
            records.append(record)
    if not records:
        raise InputError(f"{path}: no questions; {fix}")
    return records


def score_pope_splits(
    labels: Mapping[str, Sequence[str]], answers: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float | int]]:
    """``{split: scores json}`` for every split, plus ``mean``: each of the five numbers averaged
    over the splits (LLaVA-1.5 reports the mean F1 of the three)."""
    result = {split: score_pope(labels[split], answers[split]).to_json() for split in labels}
    result["mean"] = {m: sum(result[s][m] for s in labels) / len(labels) for m in METRICS}
    return result
