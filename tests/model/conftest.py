"""Fixtures of the model tests: the two golden reference folders and their inputs/expected tensors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from libra.model import LibraForCausalLM

FIXTURES = ["libra_reference_tiny", "libra_reference_tiny_2d"]


@pytest.fixture(autouse=True)
def _few_threads():
    # one thread: tiny ops gain nothing from more, and CI cores are shared; the fixtures were computed
    # with 2 threads, which moves float32 sums by ~1e-6 only, far below the 1e-5 tolerance
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Fixture:
    def __init__(self, folder):
        self.folder = folder
        self.cases = json.loads((folder / "cases.json").read_text())
        self.inputs = load_file(folder / "inputs.safetensors")
        self.expected = load_file(folder / "expected.safetensors")
        self.model = LibraForCausalLM.from_pretrained(folder).eval()

    def case_inputs(self, case):
        return {arg: self.inputs[key] for arg, key in case["inputs"].items()}


_loaded = {}


@pytest.fixture(params=FIXTURES, scope="session")
def fixture(request, data_dir):
    if request.param not in _loaded:
        _loaded[request.param] = Fixture(data_dir / request.param)
    return _loaded[request.param]


@pytest.fixture(scope="session")
def tiny_model(data_dir):
    return LibraForCausalLM.from_pretrained(data_dir / "libra_reference_tiny").eval()
