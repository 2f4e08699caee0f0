"""Shared test helpers: where the copied fixtures live."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
# The real-text benchmark corpus may sit next to the checkout; it is read, never copied.
REAL_CORPUS_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmark_corpus_real"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR
