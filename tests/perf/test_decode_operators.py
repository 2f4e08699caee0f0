"""perf/decode.py --operators: the host's work per decoding step, which bounds small-batch decoding.

Counted, not timed: operators do not move with the machine's load. Per decoder layer, a text decoding
step of Libra runs no more operators than the same-size LLaMA's (its image side does nothing then)."""

import pytest
import torch

from perf.decode import build_config, make_prompt, operators_per_step, runners
from perf.train_step import build_model


def _operators(name: str, layers: int) -> float:
    cfg = build_config("tiny")
    cfg.num_hidden_layers = layers
    model = build_model(name, cfg, torch.device("cpu"), torch.float32).eval()
    _, generate = runners(name, model, make_prompt(cfg, 1, "cpu", torch.float32))
    return operators_per_step(generate)


@pytest.mark.slow  # 16 s: four models, each profiled over two generates
def test_a_text_decoding_step_runs_no_more_operators_per_layer_than_llama():
    torch.manual_seed(0)
    per_layer = {name: (_operators(name, 4) - _operators(name, 2)) / 2 for name in ("ours", "llama")}
    assert 0 < per_layer["ours"] <= per_layer["llama"], per_layer
