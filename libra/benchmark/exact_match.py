"""Single-answer exact match, the three ways GQA-style pipelines compute it.

- ``lmms_eval``: lmms-eval's generic ``exact_match`` with ``ignore_case`` and
  ``ignore_punctuation``: strip the prediction, lower-case both sides, delete every
  ``string.punctuation`` character, compare. No article or number mapping.
- ``llava``: LLaVA's ``convert_gqa_for_eval.py``: ``prediction.rstrip('.').lower()`` against the
  gold answer as it is.
- ``lavis``: LAVIS ``GQATask``: both sides through the official VQA normalisation.

Pure Python; imports nothing of libra.
"""

from __future__ import annotations

import string
from collections.abc import Callable

from libra.benchmark.vqa_answers import normalize_official

_DELETE_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, None))


def lmms_eval_exact_match(prediction: str, gold: str) -> float:
    pred = prediction.strip().lower().translate(_DELETE_PUNCTUATION)
    return float(pred == gold.lower().translate(_DELETE_PUNCTUATION))


def llava_gqa_exact_match(prediction: str, gold: str) -> float:
    return float(prediction.rstrip(".").lower() == gold)


def lavis_gqa_exact_match(prediction: str, gold: str) -> float:
    return float(normalize_official(prediction) == normalize_official(gold))


# name (as in the benchmark corpus' expected files) -> 1.0 for a match, else 0.0
EXACT_MATCH_RULES: dict[str, Callable[[str, str], float]] = {
    "lmms_eval_exact_match": lmms_eval_exact_match,
    "llava_rstrip_lower_exact": llava_gqa_exact_match,
    "lavis_gqa_normalised_exact": lavis_gqa_exact_match,
}
