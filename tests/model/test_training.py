"""Training-side features: gradient checkpointing, bf16, and building Libra from a LLaMA folder."""

import re
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from libra.model import LibraForCausalLM

TINY_VISION = {
    "vision_vocab_size": 18,
    "image_feature_resolution": 4,
    "max_vision_token_length": 18,
    "contiguous_signal_size": 32,
}


def _batch0(data_dir):
    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    return {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("batch0.")}


def _grads(model, batch):
    model.zero_grad()
    loss = model(**batch, return_logits=False).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def test_gradient_checkpointing_gives_the_same_gradients(data_dir):
    model = LibraForCausalLM.from_pretrained(data_dir / "libra_reference_tiny_2d").train()
    batch = _batch0(data_dir)
    loss, grads = _grads(model, batch)
    with warnings.catch_warnings():  # transformers 5 renamed it activation_checkpointing_enable
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing
    loss_ckpt, grads_ckpt = _grads(model, batch)
    assert loss_ckpt == loss
    assert grads.keys() == grads_ckpt.keys()
    assert len(grads) == len(list(model.parameters()))  # every parameter is trained (2d head included)
    for name, g in grads.items():
        assert torch.allclose(g, grads_ckpt[name], atol=1e-6), name


def test_bf16_forward_backward_and_generate(data_dir, tiny_model):
    model = LibraForCausalLM.from_pretrained(data_dir / "libra_reference_tiny", dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    batch = _batch0(data_dir)
    batch["contiguous_signal"] = batch["contiguous_signal"].bfloat16()
    out = model(**batch)
    assert out.logits.dtype == torch.bfloat16
    assert abs(out.loss.item() - 3.614649772644043) < 0.05  # fp32 fixture loss, bf16 rounding only
    out.loss.backward()
    assert model.model.layers[0].self_attn.vision_k_bridge_on_vision.weight_A.grad.dtype == torch.bfloat16
    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    gen = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("gen_text.")}
    gen["contiguous_signal"] = gen["contiguous_signal"].bfloat16()
    ids = model.eval().generate(**gen, max_new_tokens=4)
    reference = tiny_model.generate(
        **{**gen, "contiguous_signal": gen["contiguous_signal"].float()}, max_new_tokens=4
    )
    assert ids.shape == reference.shape
    assert torch.equal(ids[:, :, :26], reference[:, :, :26])  # first token agrees despite bf16


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        pad_token_id=0,
    )
    llama = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("llama")
    llama.save_pretrained(folder)
    return folder, llama


def test_from_llama_loads_language_weights_and_inits_vision(llama_folder):
    folder, llama = llama_folder
    libra = LibraForCausalLM.from_llama(folder, **TINY_VISION).eval()
    libra_state = libra.state_dict()
    for name, weight in llama.state_dict().items():
        assert torch.equal(libra_state[name], weight), name  # 1:1 under the LLaMA names
    for name, weight in libra_state.items():
        if "bridge" in name and name.endswith("weight_B"):
            assert (weight == 0).all(), name
        elif "vision_" in name and name.endswith(("weight_A", "weight_B")):
            assert 0.01 < weight.std().item() < 0.03, name  # N(0, initializer_range = 0.02)
        elif "vision" in name and "norm" in name:
            assert (weight == 1).all(), name
    assert libra.config.contiguous_signal_size == 32 and libra.config.num_hidden_layers == 2


def test_from_llama_text_logits_equal_llama(llama_folder):
    """On text-only input a fresh Libra is exactly its LLaMA: bridges and vision weights are never used."""
    folder, llama = llama_folder
    libra = LibraForCausalLM.from_llama(folder, **TINY_VISION).eval()
    ids = torch.randint(3, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = libra(
            input_ids=ids.expand(2, -1, -1), vision_indices=torch.full_like(ids, 18), use_cache=False
        ).logits
        theirs = llama(input_ids=ids).logits
    assert (ours[0, :, :, :128] - theirs).abs().max().item() < 1e-5
    assert torch.isneginf(ours[..., 128:]).all()


@pytest.mark.parametrize("dropped", ["model.layers.1.mlp.down_proj.weight", "lm_head.weight"])
def test_from_llama_refuses_a_folder_that_lacks_a_language_weight(llama_folder, tmp_path, dropped):
    """Only the vision half may start fresh: a LLaMA weight the files lack (a damaged shard, a LLaMA
    with a tied head) is named, not left at random init."""
    folder, _ = llama_folder
    damaged = tmp_path / "llama"
    shutil.copytree(folder, damaged)
    weights = load_file(damaged / "model.safetensors")
    del weights[dropped]
    save_file(weights, damaged / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{damaged}.*missing.*{re.escape(dropped)}"):
        LibraForCausalLM.from_llama(damaged, **TINY_VISION)


def test_from_llama_refuses_a_non_llama_folder(data_dir):
    with pytest.raises(ValueError, match="model_type"):
        LibraForCausalLM.from_llama(data_dir / "libra_reference_tiny")
