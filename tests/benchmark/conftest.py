"""Fixtures for the benchmark tests: one run per corpus (the real-text one only when present)."""

from pathlib import Path

import pytest
from bench_corpus import CORPORA


@pytest.fixture(params=CORPORA)
def corpus(request) -> Path:
    return request.param
