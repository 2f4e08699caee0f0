"""The stacked A factors of the low-rank groups: built once for inference, never stale, and not used
where autograd must reach each parameter."""

import copy

import torch
from safetensors.torch import load_file


def _batch0(data_dir):
    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    return {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("batch0.")}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


def test_eval_reuses_one_stack_per_group(tiny_model, data_dir):
    model = copy.deepcopy(tiny_model).eval()
    batch = _batch0(data_dir)
    first = _logits(model, batch)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    stacks = {name: t for name, (_, t) in {**attn._stacks, **mlp._stacks}.items()}
    assert set(stacks) == {"vision", "text_bridge", "gate_up"}
    again = _logits(model, batch)
    assert torch.equal(first, again)
    for name, (_, t) in {**attn._stacks, **mlp._stacks}.items():
        assert t is stacks[name], name  # not concatenated again
    group = [
        "vision_q_proj",
        "vision_k_proj",
        "vision_v_proj",
        "vision_k_bridge_on_vision",
        "vision_v_bridge_on_vision",
    ]
    expected = torch.cat([getattr(attn, name).weight_A for name in group])
    assert torch.equal(stacks["vision"], expected)


def test_an_updated_factor_is_seen_at_once(tiny_model, data_dir):
    """In-place updates (an optimizer step, load_state_dict) bump the version: the stack is rebuilt."""
    model = copy.deepcopy(tiny_model).eval()
    batch = _batch0(data_dir)
    _logits(model, batch)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.vision_up_proj.weight_A.mul_(1.5)
            layer.self_attn.vision_v_proj.weight_A.add_(0.05)
    fresh = copy.deepcopy(model)
    for layer in fresh.model.layers:
        layer.mlp._stacks.clear()
        layer.self_attn._stacks.clear()
    assert torch.equal(_logits(model, batch), _logits(fresh, batch))
    model.load_state_dict(tiny_model.state_dict())
    assert torch.equal(_logits(model, batch), _logits(tiny_model, batch))


def test_writes_through_data_in_train_mode_are_seen_after_eval(tiny_model, data_dir):
    """DeepSpeed's optimizers write `.data` (no version bump) while training: train() drops the stacks."""
    model = copy.deepcopy(tiny_model).eval()
    batch = _batch0(data_dir)
    before = _logits(model, batch)
    model.train()
    for layer in model.model.layers:
        layer.self_attn.vision_q_proj.weight_A.data.mul_(2.0)
    model.eval()
    after = _logits(model, batch)
    reference = copy.deepcopy(model)
    for layer in reference.model.layers:
        layer.self_attn._stacks.clear()
    assert torch.equal(after, _logits(reference, batch))
    assert not torch.equal(after, before)


def test_moving_the_model_drops_the_stacks(tiny_model, data_dir):
    model = copy.deepcopy(tiny_model).eval()
    batch = _batch0(data_dir)
    _logits(model, batch)
    model.to(torch.float64)
    assert all(not layer.mlp._stacks for layer in model.model.layers)
    batch64 = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    assert _logits(model, batch64).dtype == torch.float64


def test_training_concatenates_so_every_factor_gets_its_gradient(tiny_model, data_dir):
    model = copy.deepcopy(tiny_model).train()
    batch = _batch0(data_dir)
    model(**batch, return_logits=False).loss.backward()
    for layer in model.model.layers:
        assert not layer.self_attn._stacks and not layer.mlp._stacks
        for module in (
            layer.self_attn.vision_k_proj,
            layer.self_attn.vision_k_bridge_on_vision,
            layer.mlp.vision_gate_proj,
        ):
            assert module.weight_A.grad is not None and module.weight_A.grad.abs().sum() > 0
