"""Fixtures for the benchmark tests: one run per corpus (the real-text one only when present), and a
tiny checkpoint for the runner tests."""

from pathlib import Path

import pytest
from bench_corpus import CORPORA
from tiny_bench import build_tiny_checkpoint


@pytest.fixture(params=CORPORA)
def corpus(request) -> Path:
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(export folder of an untrained tiny Libra, the synthetic cache it was built from)."""
    cache = tmp_path_factory.mktemp("cache")
    return build_tiny_checkpoint(cache, tmp_path_factory.mktemp("ckpt")), cache
