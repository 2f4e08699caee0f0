"""FLOPs on each token's path (libra/model/flops.py), checked against the modules' own parameters."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from libra.model import LibraConfig, LibraForCausalLM
from libra.model.flops import causal_pairs, forward_flops, path_flops, training_flops_per_token
from libra.model.modeling import LibraLinear

TINY = dict(
    hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
    vision_vocab_size=18, image_feature_resolution=4, max_vision_token_length=18, contiguous_signal_size=24,
)  # fmt: skip


def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_the_11b_paths_match_the_cost_model():
    """Released dimensions: 202.5 M multiply-adds per layer for a text token (with its bridges),
    132.3 M for an image token, so an image token costs 0.65 of a text token."""
    p = path_flops(LibraConfig())
    L, C = 32, 4096
    text_layer = (p.text - 2 * C * 32000) / 2 / L + p.text_bridge / 2 / L
    image_heads = 2 * C * 514 + (C + 4096) * C
    assert round(text_layer / 1e6, 1) == 202.5
    assert round((p.image / 2 - image_heads) / L / 1e6, 1) == 132.3
    assert 0.64 < p.image / p.text < 0.66


def test_each_path_counts_exactly_the_weights_it_runs():
    """A linear layer does one multiply-add per weight and token: count the modules' parameters."""
    for mode in ("1d", "2d"):
        cfg = LibraConfig(**TINY, vision_prediction_mode=mode)
        model = LibraForCausalLM(cfg)
        layers = model.model.layers
        text = [m for layer in layers for m in layer.modules() if type(m) is torch.nn.Linear]
        vision = [m for layer in layers for n, m in layer.named_modules() if isinstance(m, LibraLinear)]
        on_language = [m for layer in layers for n, m in layer.named_modules() if n.endswith("on_language")]
        image_only = [m for m in vision if all(m is not x for x in on_language)]
        p = path_flops(cfg)
        assert p.text == 2 * (_params(text) + _params([model.lm_head]))
        heads = [model.vision_lm_head, model.model.vision_contiguous_signal_processor]
        assert p.image == 2 * (_params(image_only) + _params(heads))
        assert p.text_bridge == 2 * _params(on_language)


def test_the_text_path_is_a_same_size_llama():
    cfg = LibraConfig(**TINY)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4
        )
    )
    matmuls = [m for m in llama.modules() if isinstance(m, torch.nn.Linear)]
    assert path_flops(cfg).text == 2 * _params(matmuls)
    # text only: no bridge runs (no image query reads a bridged key)
    per_pair = 2 * (32 + 32) * 2  # 2 flops per multiply-add, QK^T and AV over the width, 2 layers
    assert forward_flops(cfg, 10, 0, 55) == 10 * path_flops(cfg).text + 55 * per_pair


def test_flops_per_token_of_a_batch():
    """Two rows, lengths 6 and 4 (right padding), 3 image tokens in the first."""
    cfg = LibraConfig(**TINY)
    M = cfg.max_vision_token_length
    vision_indices = torch.tensor([[M, 0, 1, 2, M, M], [M, M, M, M, M, M]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    p = path_flops(cfg)
    pairs = 6 * 7 // 2 + 4 * 5 // 2
    assert causal_pairs([6, 4]) == pairs
    expected = 3 * (7 * (p.text + p.text_bridge) + 3 * p.image + pairs * p.attention_pair) / 10
    assert abs(training_flops_per_token(cfg, vision_indices, mask) - expected) < 1e-6 * expected
    # what the trainer logged before: 6 x every parameter, here over 3x the path's FLOPs
    everything = 6 * sum(q.numel() for q in LibraForCausalLM(cfg).parameters())
    assert everything > 1.5 * expected
