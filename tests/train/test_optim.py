"""AdamW groups (no decay on norms/biases/embeddings) and llm_lr_scale (docs/design.md B22); schedules."""

import json
import math

import pytest
import torch

from libra.model.config import LibraConfig
from libra.model.modeling import LibraForCausalLM
from libra.train.optim import (
    build_adamw,
    constant_schedule,
    cosine_schedule,
    freeze_language,
    param_groups,
    warmup_note,
)


@pytest.fixture(scope="module")
def tiny_config(data_dir) -> dict:
    raw = json.loads((data_dir / "libra_reference_tiny" / "config.json").read_text())
    drop = {"architectures", "transformers_version", "torch_dtype", "model_type"}
    return {k: v for k, v in raw.items() if k not in drop}


def tiny_model(config: dict) -> LibraForCausalLM:
    torch.manual_seed(0)
    return LibraForCausalLM(LibraConfig(**config))


def test_groups_split_language_vision_and_decay(tiny_config):
    groups = {g["group_name"]: g for g in param_groups(tiny_model(tiny_config).named_parameters(), 1e-3, 0.1)}
    assert set(groups) == {"language_decay", "language_no_decay", "vision_decay", "vision_no_decay"}
    no_decay = set(groups["language_no_decay"]["names"]) | set(groups["vision_no_decay"]["names"])
    decay = set(groups["language_decay"]["names"]) | set(groups["vision_decay"]["names"])
    # embeddings, norms and the (1-D) placeholder are not decayed (the official trainer decays them)
    for name in [
        "model.embed_tokens.weight",
        "model.vision_embed_tokens.0.weight",
        "model.norm.weight",
        "model.layers.0.vision_input_layernorm.weight",
        "model.vision_signal_norm.weight",
        "vision_hidden_placeholder",
    ]:
        assert name in no_decay, name
    for name in [
        "lm_head.weight",
        "vision_lm_head.heads.0.weight",
        "model.layers.1.mlp.vision_up_proj.weight_A",
    ]:
        assert name in decay, name
    assert "model.layers.0.self_attn.q_proj.weight" in groups["language_decay"]["names"]
    assert groups["vision_no_decay"]["weight_decay"] == 0.0
    assert groups["vision_decay"]["weight_decay"] == 0.1


def test_llm_lr_scale_really_scales_the_language_update(tiny_config):
    """With a gradient of 1 everywhere, AdamW's first step moves each weight by exactly its group lr."""
    model = tiny_model(tiny_config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_adamw(model, lr=1e-3, weight_decay=0.0, llm_lr_scale=0.1)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved["model.layers.0.mlp.gate_proj.weight"] == pytest.approx(1e-4, rel=1e-3)
    assert moved["lm_head.weight"] == pytest.approx(1e-4, rel=1e-3)
    assert moved["model.layers.0.mlp.vision_gate_proj.weight_A"] == pytest.approx(1e-3, rel=1e-3)
    assert moved["vision_lm_head.heads.1.weight"] == pytest.approx(1e-3, rel=1e-3)


def test_weight_decay_skips_norms_and_embeddings(tiny_config):
    """Zero gradient: only decoupled weight decay moves weights, and only the decayed ones."""
    model = tiny_model(tiny_config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_adamw(model, lr=1e-2, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    w = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(after[w].detach(), before[w] * (1 - 1e-2 * 0.5))
    for name in ["model.embed_tokens.weight", "model.norm.weight", "model.vision_embed_tokens.1.weight"]:
        torch.testing.assert_close(after[name].detach(), before[name])


def test_stage_one_freezes_exactly_the_language_half(tiny_config):
    model = tiny_model(tiny_config)
    freeze_language(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("vision" in n for n in trainable)
    assert "model.layers.0.self_attn.vision_k_bridge_on_language.weight_A" in trainable
    groups = param_groups(model.named_parameters(), 1e-3, 0.1, llm_lr_scale=0.0)
    assert {g["group_name"] for g in groups} == {"vision_decay", "vision_no_decay"}


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = cosine_schedule(optimizer, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs[:3] == pytest.approx([1.0, 2.0, 2.0])
    # halfway through the decay: floor + half the range
    assert lrs[6] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8))))
    assert schedule.get_last_lr()[0] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_constant_schedule_and_warmup_ratio():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = constant_schedule(optimizer, total_steps=100, warmup_ratio=0.04)
    lrs = []
    for _ in range(6):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_a_warm_up_longer_than_the_run_is_noted():
    assert warmup_note(total_steps=400, warmup_steps=10) is None
    assert warmup_note(total_steps=10, warmup_steps=10) is None  # peaks at the last step
    assert warmup_note(total_steps=100, warmup_steps=None) is None  # a ratio of the run fits it
    note = warmup_note(total_steps=1, warmup_steps=10)
    assert "scheduler.warmup_steps=10 is longer than trainer.max_steps=1" in note and "ends at 10%" in note
