"""Where the benchmark corpora live: the synthetic one copied into tests/data, and the real-text
one read in place from ../shared when present (never copied)."""

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ROOT / "tests" / "data" / "benchmark_corpus"
REAL = ROOT.parent / "shared" / "benchmark_corpus_real"
JAVA = shutil.which("java") is not None

CORPORA = [
    pytest.param(SYNTHETIC, id="synthetic"),
    pytest.param(
        REAL, id="real", marks=pytest.mark.skipif(not REAL.is_dir(), reason="no benchmark_corpus_real")
    ),
]


def load(path: Path):
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def vqa_paths(corpus: Path) -> dict[str, Path]:
    return {
        "questions": corpus / "vqa" / "OpenEnded_mscoco_hidden_questions.json",
        "annotations": corpus / "vqa" / "mscoco_hidden_annotations.json",
        "results": corpus / "vqa" / "OpenEnded_mscoco_hidden_results.json",
    }


def caption_paths(corpus: Path) -> dict[str, Path]:
    return {
        "gt": corpus / "captioning" / "coco_karpathy_test_gt.json",
        "karpathy": corpus / "captioning" / "coco_karpathy_test.json",
        "results": corpus / "captioning" / "captions_results.json",
    }
