"""Fixtures of the tokenizer tests: the tiny official-layout folder and its goldens.

Test modules define their own paths rather than importing this file: several test folders have a
``conftest.py``, so ``import conftest`` would be ambiguous in a whole-suite run.
"""

from pathlib import Path

import pytest
from safetensors.torch import load_file

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

VT_DIR = DATA_DIR / "vision_tokenizer_tiny"
PROC_DIR = DATA_DIR / "processor_tiny"
MODEL_DIR = VT_DIR / "model"


@pytest.fixture(scope="session")
def vt_expected():
    return load_file(VT_DIR / "expected.safetensors")


@pytest.fixture(scope="session")
def proc_expected():
    return load_file(PROC_DIR / "expected.safetensors")


@pytest.fixture(scope="session")
def vision_tokenizer():
    from libra.tokenizer.vision_tokenizer import VisionTokenizer

    return VisionTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="session")
def processor():
    from libra.tokenizer.processor import LibraProcessor

    return LibraProcessor.from_pretrained(MODEL_DIR)
