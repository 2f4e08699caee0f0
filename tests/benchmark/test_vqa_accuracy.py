"""Official VQA accuracy and the other pipelines' processors reproduce the reference tools'
outputs on the benchmark corpora (official rounded numbers exactly, the rest to 1e-9)."""

import pytest
from bench_corpus import load, vqa_paths

from libra.benchmark.exact_match import EXACT_MATCH_RULES
from libra.benchmark.files import load_vqa_annotations, load_vqa_results
from libra.benchmark.vqa_accuracy import evaluate_vqa, score_official

TOL = 1e-9


@pytest.fixture
def vqa(corpus):
    paths = vqa_paths(corpus)
    annotations = load_vqa_annotations(paths["annotations"])
    return annotations, load_vqa_results(paths["results"], annotations)


def test_official_accuracy_matches_vqaeval(corpus, vqa):
    annotations, predictions = vqa
    result = evaluate_vqa(annotations, predictions)
    expected = load(corpus / "expected" / "vqa_official_accuracy.json")
    assert result.overall == expected["overall"]
    assert result.per_question_type == expected["perQuestionType"]
    assert result.per_answer_type == expected["perAnswerType"]
    eval_qa = result.to_json()["evalQA"]
    assert eval_qa == {k: v for k, v in load(corpus / "expected" / "vqa_official_evalQA.json").items()}
    for name, key in (("evalQuesType", "question_type"), ("evalAnsType", "answer_type")):
        grouped = load(corpus / "expected" / f"vqa_official_{name}.json")
        by_id = {str(a["question_id"]): a[key] for a in annotations}
        assert grouped == {t: {q: eval_qa[q] for q in qs} for t, qs in grouped.items()}
        assert all(by_id[q] == t for t, qs in grouped.items() for q in qs)
    unrounded = load(corpus / "expected" / "vqa_variants_overall.json")["official_unrounded_overall_x100"]
    assert result.overall_unrounded == pytest.approx(unrounded, abs=TOL)


def test_official_per_question_processing(corpus, vqa):
    annotations, predictions = vqa
    expected = load(corpus / "expected" / "vqa_official_per_question.json")
    assert len(expected) == len(annotations)
    for ann in annotations:
        want = expected[str(ann["question_id"])]
        got = score_official(predictions[ann["question_id"]], ann["answers"])
        assert got.accuracy == pytest.approx(want["acc"], abs=TOL), ann["question_id"]
        assert got.normalised == want["normalisation_applied"]
        assert got.prediction == want["pred_processed"]
        assert list(got.answers) == want["gt_processed"]


@pytest.mark.parametrize(
    "name", ["lmms_eval_vqav2", "lmms_eval_okvqa_vizwiz", "lmms_eval_textvqa", "llava_m4c_textvqa"]
)
def test_variant_processors(corpus, vqa, name):
    annotations, predictions = vqa
    result = evaluate_vqa(annotations, predictions, processor=name)
    per_question = load(corpus / "expected" / "vqa_variants_per_question.json")[name]
    assert len(per_question) == len(result.per_question)
    for qid, want in per_question.items():
        assert result.per_question[int(qid)] == pytest.approx(want, abs=TOL), qid
    overall = load(corpus / "expected" / "vqa_variants_overall.json")[name]
    assert result.overall_unrounded == pytest.approx(overall["overall_x100"], abs=TOL)
    for atype, want in overall["perAnswerType_x100"].items():
        assert result.per_answer_type_unrounded[atype] == pytest.approx(want, abs=TOL)


def test_lavis_processor_rounded_like_lavis(corpus, vqa):
    annotations, predictions = vqa
    result = evaluate_vqa(annotations, predictions, processor="lavis")
    expected = load(corpus / "expected" / "vqa_variants_overall.json")["lavis_vqa_tools"]
    assert result.overall == expected["overall_x100_rounded"]
    assert result.per_answer_type == expected["perAnswerType_x100_rounded"]
    per_question = load(corpus / "expected" / "vqa_variants_per_question.json")[
        "lavis_vqa_tools_x100_rounded"
    ]
    assert result.to_json()["evalQA"] == per_question


@pytest.mark.parametrize("rule", sorted(EXACT_MATCH_RULES))
def test_gqa_style_exact_match(corpus, vqa, rule):
    annotations, predictions = vqa
    expected = load(corpus / "expected" / "gqa_style_exact_match.json")
    result = evaluate_vqa(annotations, predictions, processor=rule)
    assert {str(k): v for k, v in result.per_question.items()} == expected["per_question"][rule]
    assert result.overall_unrounded == pytest.approx(expected["overall_x100"][rule], abs=TOL)
