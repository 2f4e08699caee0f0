"""Config options the released checkpoints do not use, checked against equivalent official settings."""

import torch
from safetensors.torch import load_file

from libra.model import LibraConfig, LibraForCausalLM


def _tiny(data_dir, **overrides):
    raw = LibraConfig.from_pretrained(data_dir / "libra_reference_tiny").to_dict()
    raw.update(overrides)
    torch.manual_seed(0)
    model = LibraForCausalLM(LibraConfig(**raw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def _batch(data_dir):
    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    return {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("batch0.")}


def _copy_shared(src, dst):
    shared = {k: v for k, v in src.state_dict().items() if k in dst.state_dict()}
    dst.load_state_dict(shared, strict=False)


def test_no_bridge_equals_zero_bridges(data_dir):
    with_bridge = _tiny(data_dir)
    without = _tiny(data_dir, use_bridge=False)
    with torch.no_grad():
        for name, p in with_bridge.named_parameters():
            if "bridge" in name:
                p.zero_()
    _copy_shared(with_bridge, without)
    batch = _batch(data_dir)
    with torch.no_grad():
        a, b = with_bridge(**batch), without(**batch)
    assert "model.layers.0.self_attn.vision_k_bridge_on_vision.weight_A" not in without.state_dict()
    assert abs(a.loss.item() - b.loss.item()) < 1e-6


def test_vision_position_embedding_adds_a_per_slot_vector(data_dir):
    plain = _tiny(data_dir)
    with_table = _tiny(data_dir, use_vision_position_embedding=True)
    _copy_shared(plain, with_table)
    batch = _batch(data_dir)
    with torch.no_grad():
        with_table.model.vision_position_embedding.weight.zero_()
        assert abs(plain(**batch).loss.item() - with_table(**batch).loss.item()) < 1e-6
        with_table.model.vision_position_embedding.weight.normal_()
        assert abs(plain(**batch).loss.item() - with_table(**batch).loss.item()) > 1e-3


def test_added_signal_without_norm(data_dir):
    model = _tiny(data_dir, concat_signals=False, norm_signals=False)
    assert model.model.vision_contiguous_signal_processor.weight.shape == (64, 32)
    batch = _batch(data_dir)
    with torch.no_grad():
        base = model(**batch, output_hidden_states=True)
        zero = model(**{**batch, "contiguous_signal": None}, output_hidden_states=True)
    # the signal changes image embeddings only, by exactly the projected features
    vision = batch["vision_indices"] < 18
    diff = base.hidden_states[0] - zero.hidden_states[0]
    expected = model.model.vision_contiguous_signal_processor(batch["contiguous_signal"])
    assert (diff[~vision] == 0).all()
    assert torch.allclose(diff[vision], expected[vision], atol=1e-6)


def test_bad_input_names_the_argument(tiny_model, data_dir):
    import pytest

    batch = _batch(data_dir)
    with pytest.raises(ValueError, match="input_ids must be"):
        tiny_model(**{**batch, "input_ids": batch["input_ids"][0]})
    with pytest.raises(ValueError, match="vision_indices"):
        tiny_model(**{**batch, "vision_indices": torch.full_like(batch["vision_indices"], 18)})
    with pytest.raises(ValueError, match="contiguous_signal"):
        tiny_model(**{**batch, "contiguous_signal": batch["contiguous_signal"][..., :8]})
