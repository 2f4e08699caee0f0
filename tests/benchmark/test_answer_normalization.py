"""VQA answers are normalised with the EvalAI answer processor before the (unchanged) official scorer
sees them, as every published VQAv2 / VizWiz / OK-VQA / TextVQA number is; the results file holds
the normalised answers, so the official tool scores it the same."""

import pytest

from libra.benchmark.tasks import VQATask
from libra.benchmark.vqa_accuracy import evaluate_vqa, official_accuracy


class Questions:
    """A reader with records only (scoring never opens images)."""

    def __init__(self, answers: dict[int, list[str]]):
        self.answers = answers
        self.ids = list(answers)

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, index: int):
        qid = self.ids[index]
        return qid, f"question {qid}?", f"{qid}.png", self.answers[qid]


def score(prediction: str, humans: list[str], normalization: str = "evalai") -> float:
    task = VQATask(Questions({7: humans}), answer_normalization=normalization)
    items = task.items()
    return task.score(items, {7: prediction})[1][7]


def test_capitalised_yes_scores_one_against_ten_yes():
    ten_yes = [{"answer": "yes", "answer_id": i} for i in range(1, 11)]
    assert official_accuracy("Yes", ten_yes) == 0.0  # the official scorer itself is unchanged
    assert score("Yes", ["yes"] * 10) == 1.0
    assert score("Yes", ["yes"] * 10, normalization="none") == 0.0


@pytest.mark.parametrize(
    "prediction, unanimous",
    [
        ("YES", "yes"),  # lower case
        ("Yes.", "yes"),  # a period not followed by a digit goes
        ("yes!", "yes"),  # punctuation next to nothing but the word: replaced by a space, then split away
        ("t-shirt", "t shirt"),  # inner punctuation becomes a space
        ("red, white", "red white"),  # ", " present: the comma is deleted
        ("10,000", "10000"),  # digit-comma-digit: deleted
        ("3.5.", "3.5"),  # a decimal point stays, a final period goes
        ("Two", "2"),  # number words to digits
        ("none", "0"),
        ("An apple", "apple"),  # articles dropped
        ("the red one", "red 1"),
        ("dont know", "don't know"),  # a contraction missing its apostrophe gets it back
        ("whats that", "what's that"),
        ("Left\n", "left"),  # whitespace cleaned, then lower case
    ],
)
def test_each_normalisation_rule_against_unanimous_humans(prediction, unanimous):
    assert score(prediction, [unanimous] * 10) == 1.0
    assert score(prediction, [unanimous] * 10, normalization="none") == 0.0


def test_possessives_are_split_as_the_evalai_processor_does():
    # EvalAI's word tokenizer turns "'s" into " 's" (LLaVA's submissions carry it to the server): a
    # possessive no longer matches a unanimous raw "man's" -- the published pipelines' behaviour.
    assert score("man's", ["man's"] * 10) == 0.0
    assert score("man's", ["man 's"] * 10) == 1.0


def test_results_file_holds_the_normalised_answers_and_rescores_the_same():
    humans = {1: ["yes"] * 10, 2: ["2"] * 9 + ["two"], 3: ["blue"] * 10}
    task = VQATask(Questions(humans))
    items = task.items()
    predictions = {1: "Yes.", 2: "Two", 3: "green"}
    metrics, per_item = task.score(items, predictions)
    assert per_item == {1: 1.0, 2: 1.0, 3: 0.0}
    results = task.predictions_json(predictions)
    assert results == [
        {"question_id": 1, "answer": "yes"},
        {"question_id": 2, "answer": "2"},
        {"question_id": 3, "answer": "green"},
    ]
    annotations = task.annotations(items)
    again = evaluate_vqa(annotations, {r["question_id"]: r["answer"] for r in results})  # the official scorer
    assert again.overall_unrounded == pytest.approx(metrics["unrounded"]["overall"])


def test_unknown_options_are_refused_by_name():
    with pytest.raises(ValueError, match="answer_normalization='lower'"):
        VQATask(Questions({}), answer_normalization="lower")
    with pytest.raises(ValueError, match="processor='oficial'"):
        VQATask(Questions({}), processor="oficial")
    with pytest.raises(ValueError, match="prompt_format='plain'"):
        VQATask(Questions({}), prompt_format="plain")
