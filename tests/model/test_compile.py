"""torch.compile: the decoder layer (trainer.compile) and the decoding step trace without graph breaks."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from libra.model import LibraCache
from libra.model.modeling import AttentionLayout, Routing, rope_cos_sin


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _batch(data_dir, name="batch0"):
    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    return {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(name + ".")}


def _layer_inputs(model, vision_mask: torch.Tensor):
    """What LibraModel.forward hands each layer, for a right-padded training batch."""
    B, N = vision_mask.shape
    columns = vision_mask.any(0).nonzero()
    span = (int(columns.min()), int(columns.max()) + 1) if len(columns) else (N, 0)
    routing = Routing.from_vision_mask(vision_mask)
    attn = AttentionLayout.build(None, routing, 0, False, False, span)
    C = model.config.hidden_size
    x = torch.randn(B * N, C, requires_grad=torch.is_grad_enabled())
    rope = rope_cos_sin(torch.arange(N).expand(B, N), model.config.head_dim, x.dtype)
    return x, routing, rope, attn, None


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("images", [True, False])
def test_decoder_layer_is_one_graph(tiny_model, data_dir, mode, images):
    model = copy.deepcopy(tiny_model).train(mode == "train")
    vision_mask = _batch(data_dir)["vision_indices"] < model.config.max_vision_token_length
    if not images:
        vision_mask = torch.zeros_like(vision_mask)
    with torch.set_grad_enabled(mode == "train"):
        explained = torch._dynamo.explain(model.model.layers[0])(*_layer_inputs(model, vision_mask))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_decoding_step_is_one_graph(tiny_model, data_dir):
    """The static-cache step has no host read, so CUDA graphs can capture it whole."""
    kw = _batch(data_dir, "gen_image")  # rows end on boi: the next step has image queries
    B, N = kw["attention_mask"].shape
    cache = LibraCache(tiny_model.config.num_hidden_layers, max_length=128)
    cfg = tiny_model.config
    image = torch.full((2, B, 1), cfg.vocab_size + 5), torch.ones(B, 1, dtype=torch.long)  # first code
    text = torch.full((2, B, 1), cfg.newline_token_id), torch.full((B, 1), cfg.max_vision_token_length)
    with torch.no_grad():
        tiny_model(**kw, past_key_values=cache, use_cache=True, last_logits_only=True)
        pos = kw["attention_mask"].sum(-1, keepdim=True)
        for (ids, vis), n_vision in ((image, B), (text, 0)):
            explained = torch._dynamo.explain(tiny_model.decoding_step)(ids, vis, pos, cache, n_vision)
            assert explained.graph_break_count == 0, explained.break_reasons


def test_compile_layers_compiles_every_layer(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.model.compile_layers()
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)


@pytest.mark.slow
def test_compiled_layers_train_like_eager(tiny_model, data_dir):
    """trainer.compile=true: the same loss and gradients as the eager model."""
    eager = copy.deepcopy(tiny_model).train()
    compiled = copy.deepcopy(tiny_model).train()
    compiled.model.compile_layers()
    for name in ("batch0",):  # one shape: every new shape costs another compilation
        batch = _batch(data_dir, name)
        losses = []
        for model in (eager, compiled):
            model.zero_grad()
            loss = model(**batch, return_logits=False).loss
            loss.backward()
            losses.append(loss.detach())
        assert torch.allclose(losses[0], losses[1], atol=1e-5), name
        for (n, a), b in zip(eager.named_parameters(), compiled.parameters()):
            if a.grad is not None:
                assert torch.allclose(a.grad, b.grad, atol=1e-5), (name, n)
