"""``python -m libra.benchmark.score`` prints the reference numbers and names bad ids."""

import json
import subprocess
import sys

import pytest
from bench_corpus import ROOT, caption_paths, load, vqa_paths


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "libra.benchmark.score", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def vqa_args(paths, results=None):
    return [
        "vqa",
        "--questions",
        paths["questions"],
        "--annotations",
        paths["annotations"],
        "--results",
        results or paths["results"],
    ]


def test_vqa_cli_prints_official_numbers(corpus):
    out = run_cli(*vqa_args(vqa_paths(corpus)))
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    expected = load(corpus / "expected" / "vqa_official_accuracy.json")
    assert {k: printed[k] for k in ("overall", "perQuestionType", "perAnswerType")} == expected
    assert printed["evalQA"] == load(corpus / "expected" / "vqa_official_evalQA.json")
    per_question = load(corpus / "expected" / "vqa_official_per_question.json")
    assert all(
        printed["perQuestion"][q] == pytest.approx(v["acc"], abs=1e-9) for q, v in per_question.items()
    )


def test_vqa_cli_processor_option(corpus):
    out = run_cli(*vqa_args(vqa_paths(corpus)), "--processor", "lmms_eval_vqav2")
    assert out.returncode == 0, out.stderr
    expected = load(corpus / "expected" / "vqa_variants_overall.json")["lmms_eval_vqav2"]["overall_x100"]
    assert json.loads(out.stdout)["unrounded"]["overall"] == pytest.approx(expected, abs=1e-9)


def test_vqa_cli_names_missing_and_extra_ids(tmp_path):
    paths = vqa_paths(ROOT / "tests" / "data" / "benchmark_corpus")
    results = load(paths["results"])
    dropped = results.pop(3)["question_id"]
    results.append({"question_id": 123456789, "answer": "yes"})
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps(results))
    out = run_cli(*vqa_args(paths, bad))
    assert out.returncode == 2
    assert str(dropped) in out.stderr and "123456789" in out.stderr and "missing" in out.stderr


def test_caption_cli_prints_pycocoevalcap_numbers(corpus):
    paths = caption_paths(corpus)
    out = run_cli(
        "caption", "--gt", paths["karpathy"], "--results", paths["results"], "--metrics", "Bleu,ROUGE_L,CIDEr"
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    expected = load(corpus / "expected" / "caption_overall.json")["metrics"]
    per_image = load(corpus / "expected" / "caption_per_image.json")
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert printed[key] == pytest.approx(expected[key], abs=1e-9)
        assert all(
            printed["perImage"][i][key] == pytest.approx(s[key], abs=1e-9) for i, s in per_image.items()
        )
    assert "METEOR" not in printed and "SPICE" not in printed


def test_caption_cli_names_missing_images(tmp_path):
    paths = caption_paths(ROOT / "tests" / "data" / "benchmark_corpus")
    results = load(paths["results"])[1:]
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps(results))
    out = run_cli("caption", "--gt", paths["gt"], "--results", bad, "--metrics", "Bleu")
    assert out.returncode == 2
    assert "1 missing: 3019497" in out.stderr


def test_vqa_cli_names_a_malformed_answer(tmp_path):
    paths = vqa_paths(ROOT / "tests" / "data" / "benchmark_corpus")
    annotations = load(paths["annotations"])
    del annotations["annotations"][5]["answers"][2]["answer"]
    bad = tmp_path / "annotations.json"
    bad.write_text(json.dumps(annotations))
    out = run_cli(
        "vqa", "--questions", paths["questions"], "--annotations", bad, "--results", paths["results"]
    )
    assert out.returncode == 2
    assert "annotations[5].answers[2]: missing key(s) ['answer']" in out.stderr
