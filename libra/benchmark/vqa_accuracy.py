"""VQA accuracy: the official soft accuracy and the processors of other pipelines.

A question scores ``min(1, #matching humans / 3)`` averaged over the ten leave-one-out subsets of
its human answers. How the answers are normalised first differs between pipelines; each variant
is one function ``(prediction, answers) -> accuracy in [0, 1]`` registered in ``PROCESSORS``
under the name the benchmark corpus uses for it. ``evaluate_vqa`` aggregates like the official
``VQAEval``: ×100 and rounded to ``n`` decimals, overall and per question/answer type, with the
unrounded values kept next to them. Pure Python; imports nothing of libra.
"""

from __future__ import annotations

import operator
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from libra.benchmark.exact_match import EXACT_MATCH_RULES
from libra.benchmark.gc_pause import gc_paused
from libra.benchmark.vqa_answers import (
    clean_whitespace,
    normalize_evalai,
    normalize_evalai_steps,
    normalize_official,
    process_punctuation,
)

Answer = Mapping[str, Any]  # one human answer dict: {"answer", "answer_confidence", "answer_id"}


def _leave_one_out(prediction: str, answers: Sequence[str], identities: Sequence[Any] | None) -> list[float]:
    """Per-subset accuracies, in answer order.

    The official loop drops the held-out answer by *dict inequality*: identical dicts leave
    together. ``identities`` holds a hashable stand-in for each dict (``None`` when every dict is
    known to be distinct, as with unique ``answer_id``s, or when exclusion is by index).
    """
    m = answers.count(prediction)
    if m == 0:
        return [0.0] * len(answers)
    if identities is None:
        hit, miss = min(1.0, (m - 1) / 3), min(1.0, m / 3)
        return [hit if a == prediction else miss for a in answers]
    multiplicity: dict[Any, int] = defaultdict(int)
    for key in identities:
        multiplicity[key] += 1
    return [
        min(1.0, (m - multiplicity[key]) / 3) if a == prediction else min(1.0, m / 3)
        for a, key in zip(answers, identities)
    ]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


_answer_id = operator.itemgetter("answer_id")


def _identities(answers: Sequence[Answer], processed: Sequence[str]) -> list[Any] | None:
    """Hashable copies of the answer dicts (with the processed answer), or ``None`` when their
    ``answer_id``s already make them all distinct."""
    try:
        ids = set(map(_answer_id, answers))
    except KeyError:  # no answer_id: identical dicts are possible
        ids = set()
    if len(ids) == len(answers) and None not in ids:
        return None
    return [
        tuple(sorted((k, repr(v)) for k, v in a.items() if k != "answer")) + (text,)
        for a, text in zip(answers, processed)
    ]


def _cleaned(answers: Sequence[Answer]) -> list[str]:
    """The official cleanup of every human answer: newlines and tabs to spaces, then strip."""
    texts = [a["answer"] for a in answers]
    joined = "".join(texts)  # one C-level scan instead of two per answer
    if "\n" in joined or "\t" in joined:
        return list(map(clean_whitespace, texts))
    return list(map(str.strip, texts))


@dataclass(frozen=True)
class OfficialScore:
    """One question under the official rules, with what the normalisation left."""

    accuracy: float
    normalised: bool
    prediction: str
    answers: tuple[str, ...]


def _official(prediction: str, answers: Sequence[Answer]) -> tuple[float, bool, str, list[str]]:
    gts = _cleaned(answers)
    pred = clean_whitespace(prediction)
    # Normalise only when the humans disagree; a unanimous question compares raw strings.
    normalised = len(set(gts)) > 1
    if normalised:
        gts = list(map(normalize_official, gts))
        pred = normalize_official(pred)
    accs = _leave_one_out(pred, gts, _identities(answers, gts))
    return sum(accs) / len(accs), normalised, pred, gts


def score_official(prediction: str, answers: Sequence[Answer]) -> OfficialScore:
    """The official ``VQAEval.evaluate`` for one question (without its in-place rewrite of the
    human answers, which only matters if one evaluated the same objects twice)."""
    acc, normalised, pred, gts = _official(prediction, answers)
    return OfficialScore(acc, normalised, pred, tuple(gts))


def official_accuracy(prediction: str, answers: Sequence[Answer]) -> float:
    return _official(prediction, answers)[0]


def lmms_eval_vqav2_accuracy(prediction: str, answers: Sequence[Answer]) -> float:
    """lmms-eval ``vqav2``: EvalAI's punctuation and digit/article steps on the (stripped)
    prediction and the cleaned human answers, always; dict-inequality leave-one-out."""
    pred = normalize_evalai_steps(clean_whitespace(prediction.strip()))
    gts = [normalize_evalai_steps(g) for g in _cleaned(answers)]
    return statistics.mean(_leave_one_out(pred, gts, _identities(answers, gts)))


def lmms_eval_okvqa_vizwiz_accuracy(prediction: str, answers: Sequence[Answer]) -> float:
    """lmms-eval ``ok_vqa`` / ``vizwiz_vqa`` / ``textvqa``: everything through the EvalAI processor
    (which splits ``'s``), always; leave-one-out by index."""
    pred = normalize_evalai(prediction.strip())
    gts = [normalize_evalai(a["answer"]) for a in answers]
    if not gts:
        return 0.0
    return statistics.mean(_leave_one_out(pred, gts, None))


def llava_m4c_accuracy(prediction: str, answers: Sequence[Answer]) -> float:
    """LLaVA's ``m4c_evaluator.TextVQAAccuracyEvaluator``: EvalAI processor on both sides, index
    leave-one-out, exactly ten human answers."""
    if len(answers) != 10:
        raise ValueError(f"the m4c TextVQA evaluator needs exactly 10 human answers, got {len(answers)}")
    gts = [normalize_evalai(a["answer"]) for a in answers]
    pred = normalize_evalai(prediction)
    if pred not in gts:
        return 0.0
    return _mean(_leave_one_out(pred, gts, None))


def lavis_accuracy(prediction: str, answers: Sequence[Answer]) -> float:
    """LAVIS ``vqa_tools.VQAEval``: the prediction is always normalised; human answers get only
    the punctuation step, only when they disagree, and no whitespace cleanup."""
    pred = normalize_official(clean_whitespace(prediction))
    gts = [a["answer"] for a in answers]
    if len(set(gts)) > 1:
        gts = [process_punctuation(g) for g in gts]
    return _mean(_leave_one_out(pred, gts, _identities(answers, gts)))


# name (as in the benchmark corpus' expected files) -> per-question accuracy in [0, 1]
PROCESSORS: dict[str, Callable[[str, Sequence[Answer]], float]] = {
    "official": official_accuracy,
    "lmms_eval_vqav2": lmms_eval_vqav2_accuracy,
    "lmms_eval_okvqa_vizwiz": lmms_eval_okvqa_vizwiz_accuracy,
    "lmms_eval_textvqa": lmms_eval_okvqa_vizwiz_accuracy,
    "llava_m4c_textvqa": llava_m4c_accuracy,
    "lavis": lavis_accuracy,
}


@dataclass
class VQAResult:
    """Scores in the official layout (×100, rounded to ``n``) plus the unrounded means (×100)
    and per-question accuracies in [0, 1]."""

    overall: float
    per_question_type: dict[str, float]
    per_answer_type: dict[str, float]
    overall_unrounded: float
    per_question_type_unrounded: dict[str, float]
    per_answer_type_unrounded: dict[str, float]
    per_question: dict[Any, float] = field(repr=False)
    n: int = 2

    def to_json(self) -> dict[str, Any]:
        """The official ``accuracy`` keys, ``unrounded`` means, ``evalQA`` (per question, ×100,
        rounded as the official code stores it) and ``perQuestion`` (unrounded, in [0, 1])."""
        return {
            "overall": self.overall,
            "perQuestionType": self.per_question_type,
            "perAnswerType": self.per_answer_type,
            "unrounded": {
                "overall": self.overall_unrounded,
                "perQuestionType": self.per_question_type_unrounded,
                "perAnswerType": self.per_answer_type_unrounded,
            },
            "evalQA": {str(k): round(100 * v, self.n) for k, v in self.per_question.items()},
            "perQuestion": {str(k): v for k, v in self.per_question.items()},
        }


def _mean_x100(values: list[float]) -> float:
    return 100 * float(sum(values)) / len(values)


def evaluate_vqa(
    annotations: Sequence[Mapping[str, Any]],
    predictions: Mapping[Any, str],
    processor: str = "official",
    n: int = 2,
) -> VQAResult:
    """Score ``predictions`` (question id -> answer) against official-layout annotations, in
    annotation order. Every annotated question needs a prediction (the caller checks ids).

    ``processor`` names a soft-accuracy variant of ``PROCESSORS`` or a single-answer exact-match
    rule of ``EXACT_MATCH_RULES`` (gold = the annotation's ``multiple_choice_answer``).
    """
    if processor in PROCESSORS:
        soft = PROCESSORS[processor]

        def score(prediction: str, ann: Mapping[str, Any]) -> float:
            return soft(prediction, ann["answers"])

    elif processor in EXACT_MATCH_RULES:
        exact = EXACT_MATCH_RULES[processor]

        def score(prediction: str, ann: Mapping[str, Any]) -> float:
            return exact(prediction, ann["multiple_choice_answer"])

    else:
        names = sorted(PROCESSORS) + sorted(EXACT_MATCH_RULES)
        raise ValueError(f"unknown VQA processor {processor!r}; choose one of {names}")
    per_question: dict[Any, float] = {}
    by_qtype: dict[str, list[float]] = defaultdict(list)
    by_atype: dict[str, list[float]] = defaultdict(list)
    with gc_paused():
        for ann in annotations:
            qid = ann["question_id"]
            acc = score(predictions[qid], ann)
            per_question[qid] = acc
            by_qtype[ann["question_type"]].append(acc)
            by_atype[ann["answer_type"]].append(acc)
    if not per_question:
        raise ValueError("no questions to score: the annotation list is empty")
    overall = _mean_x100(list(per_question.values()))
    qtype = {t: _mean_x100(v) for t, v in by_qtype.items()}
    atype = {t: _mean_x100(v) for t, v in by_atype.items()}
    return VQAResult(
        overall=round(overall, n),
        per_question_type={t: round(v, n) for t, v in qtype.items()},
        per_answer_type={t: round(v, n) for t, v in atype.items()},
        overall_unrounded=overall,
        per_question_type_unrounded=qtype,
        per_answer_type_unrounded=atype,
        per_question=per_question,
        n=n,
    )
