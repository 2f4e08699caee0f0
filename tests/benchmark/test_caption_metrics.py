"""Caption metrics reproduce pycocoevalcap on the benchmark corpora: tokenisation of every caption,
BLEU-1..4, ROUGE-L and CIDEr-D overall and per image, two subsets, METEOR when Java is present."""

import itertools
import math
import random

import pytest
from bench_corpus import JAVA, SYNTHETIC, caption_paths, load

from libra.benchmark.caption_metrics import score_captions
from libra.benchmark.files import load_caption_references, load_caption_results
from libra.benchmark.ptb_tokenizer import tokenize, tokenize_java
from libra.benchmark.rouge import lcs_length

TOL = 1e-9
FAST_METRICS = ("Bleu", "ROUGE_L", "CIDEr")
KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")


def read(corpus):
    paths = caption_paths(corpus)
    refs = load_caption_references(paths["gt"])
    return refs, load_caption_results(paths["results"], refs)


def tokenized_batches(corpus):
    """(raw, expected) for the references and for the candidates: pycocoevalcap tokenizes the two
    in separate calls, and a caption's last period can depend on the next caption of its call."""
    refs, cands = read(corpus)
    expected = load(corpus / "expected" / "caption_ptb_tokenized.json")
    ref_raw = [r for captions in refs.values() for r in captions]
    ref_want = [r for i in refs for r in expected[str(i)]["refs"]]
    cand_raw = [cands[i] for i in refs]
    cand_want = [expected[str(i)]["candidate"] for i in refs]
    return (ref_raw, ref_want), (cand_raw, cand_want)


def test_python_tokenizer_matches_java_output(corpus):
    for raw, want in tokenized_batches(corpus):
        got = tokenize(raw)
        wrong = [(r, w, g) for r, w, g in zip(raw, want, got) if w != g]
        assert not wrong, wrong[:5]


def test_final_initial_depends_on_the_next_caption():
    # The Java lexer peeks into the next line: "D." ends a sentence before "The", not before "the".
    assert tokenize(["at CTH D.", "The dog"]) == ["at cth d", "the dog"]
    assert tokenize(["at CTH D.", "the dog"]) == ["at cth d.", "the dog"]


@pytest.mark.slow
@pytest.mark.skipif(not JAVA, reason="no java")
def test_java_tokenizer_matches_expected():
    for raw, want in tokenized_batches(SYNTHETIC):
        assert tokenize_java(raw) == want


def test_line_breaking_characters_become_spaces():
    assert tokenize(["a dog\u2028on a\rmat", "next caption"]) == ["a dog on a mat", "next caption"]


def test_karpathy_layout_gives_the_same_references(corpus):
    paths = caption_paths(corpus)
    assert load_caption_references(paths["karpathy"]) == load_caption_references(paths["gt"])


def check(result, overall, per_image, keys=KEYS):
    for key in keys:
        assert result.overall[key] == pytest.approx(overall[key], abs=TOL), key
        for image_id, scores in per_image.items():
            assert result.per_image[int(image_id)][key] == pytest.approx(scores[key], abs=TOL), (
                key,
                image_id,
            )


def test_bleu_rouge_cider_overall_and_per_image(corpus):
    refs, cands = read(corpus)
    result = score_captions(refs, cands, metrics=FAST_METRICS)
    expected = load(corpus / "expected" / "caption_overall.json")
    per_image = load(corpus / "expected" / "caption_per_image.json")
    assert len(per_image) == len(refs)
    check(result, expected["metrics"], per_image)
    stats = result.bleu_stats
    assert (stats.testlen, stats.reflen) == (
        expected["bleu_corpus_stats"]["testlen"],
        expected["bleu_corpus_stats"]["reflen"],
    )
    assert (stats.guess, stats.correct) == (
        expected["bleu_corpus_stats"]["guess"],
        expected["bleu_corpus_stats"]["correct"],
    )


@pytest.mark.parametrize("subset", ["caption_subset100", "caption_subset137"])
def test_subsets_recompute_corpus_statistics(corpus, subset):
    path = corpus / "expected" / f"{subset}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not in this corpus")
    expected = load(path)
    refs, cands = read(corpus)
    ids = expected["image_ids"]
    result = score_captions({i: refs[i] for i in ids}, {i: cands[i] for i in ids}, metrics=FAST_METRICS)
    check(result, expected["metrics"], {})
    for image_id, want in expected["per_image_CIDEr"].items():
        assert result.per_image[int(image_id)]["CIDEr"] == pytest.approx(want, abs=TOL)
    if "per_image" in expected:
        check(result, expected["metrics"], expected["per_image"])


@pytest.mark.slow
@pytest.mark.skipif(not JAVA, reason="no java: METEOR is skipped")
def test_meteor_through_the_jar(corpus):
    refs, cands = read(corpus)
    result = score_captions(refs, cands, metrics=("METEOR",))
    expected = load(corpus / "expected" / "caption_overall.json")
    check(result, expected["metrics"], load(corpus / "expected" / "caption_per_image.json"), keys=("METEOR",))


def test_missing_java_metrics_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    result = score_captions({1: ["a dog on a mat"]}, {1: "a dog"}, metrics=("Bleu", "METEOR", "SPICE"))
    assert result.overall["METEOR"] is None and result.overall["SPICE"] is None
    assert "java" in result.notes["METEOR"] and "SPICE skipped" in result.notes["SPICE"]
    # "a dog" against a 5-word reference: precision 1, brevity penalty exp(1 - 5/2).
    assert result.overall["Bleu_1"] == pytest.approx(math.exp(-1.5), abs=1e-9)


def _lcs_dp(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, j in itertools.product(range(len(a)), range(len(b))):
        table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programme():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcdf") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == _lcs_dp(a, b)
