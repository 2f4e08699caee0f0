"""Worked examples of the official answer processing and its quirks (GT-Vision-Lab/VQA ``vqaEval.py``)."""

import pytest

from libra.benchmark.vqa_accuracy import lavis_accuracy, official_accuracy, score_official
from libra.benchmark.vqa_answers import normalize_evalai, normalize_official, process_punctuation


def answers(*texts, ids=True):
    return [
        {"answer": t, "answer_confidence": "yes", **({"answer_id": i + 1} if ids else {})}
        for i, t in enumerate(texts)
    ]


@pytest.mark.parametrize(
    "raw, processed",
    [
        ("t-shirt", "t shirt"),
        ("a/c", "c"),  # slash to space, then the article goes
        ("yes, it is", "yes it is"),  # ", " present: commas are deleted, not spaced
        ("1,000", "1000"),
        ("a, b, c", "b c"),
        ("3.5", "3.5"),
        ("5.", "5"),
        ("st. louis", "st louis"),
        ("www.google.com", "wwwgooglecom"),
        ("one-way", "1 way"),
        ("eleven", "eleven"),
        ("None", "0"),
        ("dont", "don't"),
        ("im", "im"),  # the capitalised key "Im" can never match
        ("somebody'd", "somebodyd"),
        ("The  Apple", "apple"),
    ],
)
def test_official_normalisation(raw, processed):
    assert normalize_official(raw) == processed


def test_period_strip_removes_at_most_32_periods():
    assert process_punctuation("." * 40 + "x") == "." * 8 + "x"


def test_unanimous_humans_switch_normalisation_off():
    yes = answers(*["yes"] * 10)
    assert official_accuracy("yes", yes) == 1.0
    assert official_accuracy("Yes", yes) == 0.0
    assert official_accuracy("yes.", yes) == 0.0
    mixed = answers(*["yes"] * 9, "yeah")
    assert official_accuracy("Yes.", mixed) == 1.0


@pytest.mark.parametrize("m, acc", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)])
def test_leave_one_out_closed_form(m, acc):
    gts = answers(*(["red"] * m + ["blue"] * (10 - m)))
    assert official_accuracy("red", gts) == pytest.approx(acc, abs=1e-12)


def test_identical_answer_dicts_leave_together():
    # Without answer ids, two identical dicts are both excluded when one is held out.
    gts = answers("red", "red", *["blue"] * 8, ids=False)
    with_ids = answers("red", "red", *["blue"] * 8)
    assert official_accuracy("red", with_ids) == pytest.approx(0.6)
    assert official_accuracy("red", gts) == pytest.approx(0.8 * 2 / 3)
    assert score_official("red", gts).normalised


def test_evalai_splits_possessive_s():
    assert normalize_evalai("He's surfing") == "he 's surfing"
    assert normalize_official("hes surfing") == "he's surfing"


def test_lavis_leaves_human_number_words():
    gts = answers(*["two"] * 5, *["2 "] * 5)
    assert lavis_accuracy("two", gts) == 0.0  # prediction -> "2", humans keep "two" / "2 "
