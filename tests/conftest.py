"""Shared test helpers: where the copied fixtures live."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
# The real-text benchmark corpus may sit next to the checkout; it is read, never copied.
REAL_CORPUS_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmark_corpus_real"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def build_tiny_export(folder: Path, seed: int = 0) -> Path:
    """A checkpoint folder in the export layout, in seconds: a seeded random 2-layer Libra (hidden 32)
    shaped for the tiny tokenizer fixture, saved with that processor. Its answers are nonsense, but
    every way of loading and prompting it must give the same nonsense."""
    import torch

    from libra.tokenizer.processor import LibraProcessor
    from libra.train.models import tiny_libra

    processor = LibraProcessor.from_pretrained(DATA_DIR / "vision_tokenizer_tiny" / "model")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = tiny_libra(processor, 32, 64, 2, 2, initializer_range=0.08)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    return build_tiny_export(tmp_path_factory.mktemp("tiny_export"))
