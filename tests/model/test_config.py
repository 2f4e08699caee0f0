"""LibraConfig: official values, refused options, the 11B state dict (docs/design.md §2.2) on meta."""

import json

import pytest
import torch

from libra.model import LibraConfig, LibraForCausalLM


def test_defaults_are_the_released_11b_values():
    cfg = LibraConfig()
    assert cfg.model_type == "libra"
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (32000, 4096, 11008)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads) == (32, 32)
    assert cfg.contiguous_signal_size == 4096 and cfg.rms_norm_eps == 1e-6
    assert (cfg.vision_vocab_size, cfg.vision_codebook_num, cfg.max_vision_token_length) == (514, 2, 578)
    assert (cfg.boi_token_id, cfg.eoi_token_id, cfg.newline_token_id) == (32512, 32513, 13)


def test_parses_the_fixture_config(data_dir):
    raw = json.loads((data_dir / "libra_reference_tiny" / "config.json").read_text())
    cfg = LibraConfig(**raw)
    assert cfg.vision_vocab_size == 18 and cfg.image_feature_resolution == 4 and cfg.head_dim == 16


@pytest.mark.parametrize("key", ["addition_mode", "unified_head", "use_2d_rope"])
def test_unsupported_options_are_refused(key):
    with pytest.raises(ValueError, match=f"{key}=True is not supported"):
        LibraConfig(**{key: True})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vision_prediction_mode": "3d"}, "vision_prediction_mode"),
        ({"max_vision_token_length": 577}, "max_vision_token_length"),
        ({"hidden_size": 4095}, "num_attention_heads"),
        ({"concat_signals": False}, "norm_signals"),
    ],
)
def test_bad_values_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LibraConfig(**kwargs)


def _spec_11b_shapes():
    """The state dict of docs/design.md §2.2 (official config), written independently of the model code."""
    C, inner, V, VV, S, L = 4096, 11008, 32000, 514, 4096, 32
    shapes = {
        "model.embed_tokens.weight": (V, C),
        "model.norm.weight": (C,),
        "model.vision_embed_tokens.0.weight": (VV, C // 2),
        "model.vision_embed_tokens.1.weight": (VV, C // 2),
        "model.vision_norm.weight": (C,),
        "model.vision_signal_norm.weight": (C + S,),
        "model.vision_contiguous_signal_processor.weight": (C, C + S),
        "lm_head.weight": (V, C),
        "vision_lm_head.heads.0.weight": (VV, C),
        "vision_lm_head.heads.1.weight": (VV, C),
        "vision_hidden_placeholder": (C,),
    }
    for i in range(L):
        p = f"model.layers.{i}."
        for norm in ["input_layernorm", "post_attention_layernorm"]:
            shapes[p + norm + ".weight"] = (C,)
            shapes[p + "vision_" + norm + ".weight"] = (C,)
        for proj in "qkvo":
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (C, C)
            shapes[f"{p}self_attn.vision_{proj}_proj.weight_A"] = (1024, C)
            shapes[f"{p}self_attn.vision_{proj}_proj.weight_B"] = (C, 1024)
        for kv in "kv":
            for side in ["language", "vision"]:
                shapes[f"{p}self_attn.vision_{kv}_bridge_on_{side}.weight_A"] = (8, C)
                shapes[f"{p}self_attn.vision_{kv}_bridge_on_{side}.weight_B"] = (C, 8)
        shapes[p + "mlp.gate_proj.weight"] = (inner, C)
        shapes[p + "mlp.up_proj.weight"] = (inner, C)
        shapes[p + "mlp.down_proj.weight"] = (C, inner)
        for proj in ["gate", "up"]:
            shapes[f"{p}mlp.vision_{proj}_proj.weight_A"] = (2752, C)
            shapes[f"{p}mlp.vision_{proj}_proj.weight_B"] = (inner, 2752)
        shapes[p + "mlp.vision_down_proj.weight_A"] = (1024, inner)
        shapes[p + "mlp.vision_down_proj.weight_B"] = (C, 1024)
    return shapes


def test_11b_state_dict_on_meta_device():
    with torch.device("meta"):
        model = LibraForCausalLM(LibraConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _spec_11b_shapes()
    assert sum(p.numel() for p in model.parameters()) == 11_015_860_224
