"""The KV cache keeps only what later queries read; the static cache and its decoding step."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from libra.model import LibraCache, LibraConfig, LibraForCausalLM

from .conftest import Fixture


def _case(data_dir, case, fixture="libra_reference_tiny"):
    inputs = load_file(data_dir / fixture / "inputs.safetensors")
    return {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(case + ".")}


def _llama_cache_bytes(cfg, batch: int, positions: int) -> int:
    """Keys + values of a same-size LLaMA over `positions`, fp32."""
    return 2 * cfg.num_hidden_layers * batch * positions * cfg.hidden_size * 4


def test_text_decoding_keeps_a_llama_sized_cache(tiny_model, data_dir):
    """gen_text ends on a text slot: every later query is text, so only the text-query set is kept."""
    kw = _case(data_dir, "gen_text")
    B, N = kw["attention_mask"].shape
    out = tiny_model.generate(**kw, max_new_tokens=6, return_dict_in_generate=True)
    cache = out.cache
    assert all(s is None for s in cache.image_set) and all(s is not None for s in cache.text_set)
    assert cache.nbytes() == _llama_cache_bytes(tiny_model.config, B, N + 6)  # the reference: twice that


class _Operators(TorchDispatchMode):
    """Every operator a block of code runs, with its tensor arguments and result."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self.calls.append((func, pytree.tree_leaves((args, kwargs)), result))
        return result


def test_a_decoding_step_of_text_rows_runs_nothing_of_the_image_side(tiny_model, data_dir, monkeypatch):
    """After a prompt that ends on text, each step's rows are all text: no operator reads a vision_*
    weight or computes an empty tensor for the absent image rows (views of zero rows cost nothing)."""
    kw = _case(data_dir, "gen_text")
    vision_storage = {
        p.untyped_storage().data_ptr() for name, p in tiny_model.named_parameters() if "vision" in name
    }
    steps, forward = [], tiny_model.forward

    def watch_decoding_steps(*args, **kwargs):
        if kwargs["past_key_values"] is None or kwargs["past_key_values"].get_seq_length() == 0:
            return forward(*args, **kwargs)  # the prompt, which has image rows
        with _Operators() as operators:
            out = forward(*args, **kwargs)
        steps.append(operators.calls)
        return out

    monkeypatch.setattr(tiny_model, "forward", watch_decoding_steps)
    tiny_model.generate(**kw, max_new_tokens=3)
    assert len(steps) == 2
    for calls in steps:
        empties = [
            str(func)
            for func, _, result in calls
            if isinstance(result, torch.Tensor) and result.numel() == 0 and not func.is_view
        ]
        vision_reads = [
            str(func)
            for func, leaves, _ in calls
            if any(
                isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in vision_storage
                for t in leaves
            )
        ]
        assert (empties, vision_reads) == ([], [])


def test_image_generation_drops_the_image_query_set_once_the_image_is_done(tiny_model, data_dir):
    kw = _case(data_dir, "gen_image")  # the prompt ends with boi: 17 image slots follow
    B, N = kw["attention_mask"].shape
    cfg = tiny_model.config
    during = tiny_model.generate(**kw, max_new_tokens=5, return_dict_in_generate=True).cache
    assert during.image_queries and all(s is not None for s in during.image_set)
    assert during.nbytes() == 2 * _llama_cache_bytes(cfg, B, N + 5)
    after = tiny_model.generate(**kw, max_new_tokens=20, return_dict_in_generate=True).cache
    assert not after.image_queries and all(s is None for s in after.image_set)
    assert after.nbytes() == _llama_cache_bytes(cfg, B, N + 20)


def test_without_bridge_the_cache_holds_one_set(data_dir):
    cfg = LibraConfig.from_pretrained(data_dir / "libra_reference_tiny")
    cfg.use_bridge = False
    torch.manual_seed(0)
    model = LibraForCausalLM(cfg).eval()
    kw = _case(data_dir, "gen_image")
    B, N = kw["attention_mask"].shape
    out = model.generate(**kw, max_new_tokens=5, return_dict_in_generate=True)
    assert out.cache.nbytes() == _llama_cache_bytes(cfg, B, N + 5)
    uncached = model.generate(**kw, max_new_tokens=5, use_cache=False)
    assert torch.equal(out.sequences, uncached)


def _cut(inputs: dict, lo: int, hi: int) -> dict:
    """Positions [lo, hi) of the first row."""
    return {
        k: v[:, :1, lo:hi] if k == "input_ids" else v[:1, lo:hi] for k, v in inputs.items() if k != "labels"
    }


def test_a_cache_without_the_image_set_refuses_later_image_queries(tiny_model, data_dir):
    kw = _cut(_case(data_dir, "batch0"), 0, 26)  # text 0-3, image 4-21, text 22-25
    cache = LibraCache(tiny_model.config.num_hidden_layers, image_queries=False)
    with torch.no_grad():
        tiny_model(**_cut(kw, 0, 4), past_key_values=cache, use_cache=True)
        rest = _cut(kw, 4, 26)
        rest["attention_mask"] = kw["attention_mask"]
        with pytest.raises(ValueError, match="image_queries=False"):
            tiny_model(**rest, position_ids=torch.arange(4, 26)[None], past_key_values=cache, use_cache=True)


def test_a_default_cache_serves_an_image_after_cached_text(tiny_model, data_dir):
    """A caller's own cached forwards (say, a second turn that brings an image) get the image-query set:
    the image after a cached text prefix sees the same bridged text keys as in one uncached forward."""
    kw = _cut(_case(data_dir, "batch0"), 0, 26)
    with torch.no_grad():
        full = tiny_model(**kw, use_cache=False).logits[:, :, 4:]
        cache = LibraCache(tiny_model.config.num_hidden_layers)
        tiny_model(**_cut(kw, 0, 4), past_key_values=cache, use_cache=True)
        rest = _cut(kw, 4, 26)
        rest["attention_mask"] = kw["attention_mask"]
        pos = torch.arange(4, 26)[None]
        cached = tiny_model(**rest, position_ids=pos, past_key_values=cache, use_cache=True).logits
    finite = torch.isfinite(full)
    assert torch.equal(torch.isfinite(cached), finite)
    assert (full[finite] - cached[finite]).abs().max() < 1e-5


@pytest.mark.parametrize("case", ["gen_text", "gen_image"])
@pytest.mark.parametrize("fixture", ["libra_reference_tiny", "libra_reference_tiny_2d"])
def test_static_cache_decodes_the_same_tokens(data_dir, fixture, case):
    model = LibraForCausalLM.from_pretrained(data_dir / fixture).eval()
    kw = _case(data_dir, case, fixture)
    dynamic = model.generate(**kw, max_new_tokens=20, return_dict_in_generate=True, output_scores=True)
    static = model.generate(
        **kw,
        max_new_tokens=20,
        return_dict_in_generate=True,
        output_scores=True,
        cache_implementation="static",
    )
    assert torch.equal(static.sequences, dynamic.sequences)
    a, b = torch.stack(static.scores), torch.stack(dynamic.scores)
    finite = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), finite)
    # every slot of the fixed-length cache is attended with a mask: only the summation order differs
    assert (a[finite] - b[finite]).abs().max() < 1e-5
    N = kw["attention_mask"].shape[1]
    assert static.cache.is_static and static.cache.max_length % 128 == 0
    assert static.cache.max_length >= N + 20 and static.cache.length == N + 19
    assert int(static.cache.position) == static.cache.length


def test_static_cache_storage_keeps_its_shape_and_address(tiny_model, data_dir):
    kw = _case(data_dir, "gen_text")
    out = tiny_model.generate(
        **kw, max_new_tokens=3, cache_implementation="static", return_dict_in_generate=True
    )
    cache = out.cache
    before = [(s.shape, s.data_ptr()) for s in cache.text_set]
    M = tiny_model.config.max_vision_token_length
    ids = out.sequences[:, :, -1:].clone(memory_format=torch.contiguous_format)
    vis = torch.full((2, 1), M)
    pos = (kw["attention_mask"].sum(-1, keepdim=True) + 2).clone()
    with torch.no_grad():
        logits = tiny_model.decoding_step(ids, vis, pos, cache, n_vision=0)
    assert logits.shape == (2, 2, 1, tiny_model.config.vocab_size + tiny_model.config.vision_vocab_size)
    assert [(s.shape, s.data_ptr()) for s in cache.text_set] == before
    written = cache.text_set[0][:, :, :, cache.length]
    assert written.abs().sum() > 0  # the step wrote its slot in place, at the device position


def test_static_generate_calls_reuse_one_storage(tiny_model, data_dir):
    """CUDA graphs replay only while the cache they write stays at its address: generate reuses it."""
    model = copy.deepcopy(tiny_model)
    text, image = _case(data_dir, "gen_text"), _case(data_dir, "gen_image")
    options = {"cache_implementation": "static", "return_dict_in_generate": True}
    first = model.generate(**text, max_new_tokens=4, **options)
    address = [s.data_ptr() for s in first.cache.text_set]
    second = model.generate(**image, max_new_tokens=4, **options)  # another prompt, same cache length
    assert second.cache is first.cache and [s.data_ptr() for s in second.cache.text_set] == address
    assert torch.equal(second.sequences, model.generate(**image, max_new_tokens=4))
    one_row = {k: v[..., :1, :] if k == "input_ids" else v[:1] for k, v in text.items()}
    out = model.generate(**one_row, max_new_tokens=4, **options)  # batch 1: storage rebuilt to fit
    assert torch.equal(out.sequences, model.generate(**one_row, max_new_tokens=4))


def test_static_cache_refuses_what_it_cannot_do(tiny_model, data_dir):
    kw = _case(data_dir, "gen_text")
    with pytest.raises(ValueError, match="compile=True needs the static cache"):
        tiny_model.generate(**kw, max_new_tokens=2, compile=True, cache_implementation="dynamic")
    with pytest.raises(ValueError, match="use_cache=True"):
        tiny_model.generate(**kw, max_new_tokens=2, cache_implementation="static", use_cache=False)
    with pytest.raises(ValueError, match="beam search"):
        tiny_model.generate(**kw, max_new_tokens=2, cache_implementation="static", num_beams=2)
    with pytest.raises(ValueError, match="cache_implementation='paged'"):
        tiny_model.generate(**kw, max_new_tokens=2, cache_implementation="paged")
    small = LibraCache(tiny_model.config.num_hidden_layers, max_length=4)
    with pytest.raises(ValueError, match="do not fit the static cache of max_length 4"), torch.no_grad():
        tiny_model(**kw, past_key_values=small, use_cache=True)


@pytest.mark.slow
def test_compiled_decoding_step_gives_the_fixture_tokens(data_dir):
    """compile=True: the decoding step traced whole (fullgraph) and compiled by inductor, on the '2d'
    fixture (its head also reads the cached hidden states); the reference's tokens, both cases."""
    fixture = Fixture(data_dir / "libra_reference_tiny_2d")
    for case in fixture.cases["generation_cases"]:
        kw, expected = fixture.case_inputs(case), fixture.expected[case["expected"]["sequences"]]
        out = fixture.model.generate(**kw, **case["kwargs"], strict_image_structure=False, compile=True)
        assert torch.equal(out, expected), case["name"]
