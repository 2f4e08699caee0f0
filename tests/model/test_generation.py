"""Generation beyond the fixtures: strict image structure, cache equivalence, sampling, eos, beam search."""

import pytest
import torch
from safetensors.torch import load_file

from libra.model.generation import filter_scores


def _case(data_dir, case, fixture="libra_reference_tiny"):
    inputs = load_file(data_dir / fixture / "inputs.safetensors")
    return {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(case + ".")}


def _image_spans(model, sequences, prompt_len, vision_indices):
    """Image spans of the generated part, found from the vision-index rule (never from boi/eoi ids)."""
    M = model.config.max_vision_token_length
    spans = []
    for b in range(sequences.shape[1]):
        index = int(vision_indices[b, -1])
        start = prompt_len - 1 if index == 0 else None
        for t in range(prompt_len, sequences.shape[-1]):
            index = min(index + 1, M)
            if index == M - 1:
                spans.append((b, start, t))
    return spans


@pytest.mark.parametrize("fixture", ["libra_reference_tiny", "libra_reference_tiny_2d"])
@pytest.mark.parametrize("do_sample", [False, True])
def test_strict_images_have_one_boi_full_grid_one_eoi(data_dir, fixture, do_sample):
    from libra.model import LibraForCausalLM

    model = LibraForCausalLM.from_pretrained(data_dir / fixture).eval()
    cfg = model.config
    kw = _case(data_dir, "gen_image", fixture)
    g = torch.Generator().manual_seed(0)
    out = model.generate(
        **kw, max_new_tokens=22, do_sample=do_sample, temperature=1.5, top_p=0.95, generator=g
    )
    N = kw["input_ids"].shape[-1]
    spans = _image_spans(model, out, N, kw["vision_indices"])
    assert len(spans) == 2  # one image per row, both started by the prompt's final boi
    for b, start, end in spans:
        image = out[:, b, start : end + 1]  # (K, 18): boi, 16 codes, eoi
        assert (image[:, 0] == cfg.boi_token_id).all() and (image[:, -1] == cfg.eoi_token_id).all()
        codes = image[:, 1:-1] - cfg.vocab_size
        assert codes.shape[1] == cfg.image_feature_resolution**2
        assert ((codes >= 0) & (codes < cfg.vision_vocab_size - 2)).all()
        assert (out[:, b, end + 1] == cfg.newline_token_id).all()
        assert (out[:, b, end + 2 :] < cfg.vocab_size).all()  # text after the image


@pytest.mark.parametrize("strict", [True, False])
def test_cached_equals_uncached(fixture, strict):
    for case in fixture.cases["generation_cases"]:
        kw = fixture.case_inputs(case)
        cached = fixture.model.generate(
            **kw, max_new_tokens=20, use_cache=True, strict_image_structure=strict
        )
        uncached = fixture.model.generate(
            **kw, max_new_tokens=20, use_cache=False, strict_image_structure=strict
        )
        static = fixture.model.generate(
            **kw, max_new_tokens=20, cache_implementation="static", strict_image_structure=strict
        )
        assert torch.equal(cached, uncached)
        assert torch.equal(static, uncached)


def test_seeded_sampling_is_reproducible(tiny_model, data_dir):
    kw = _case(data_dir, "gen_image")

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return tiny_model.generate(
            **kw, max_new_tokens=20, do_sample=True, temperature=1.3, top_k=50, generator=g
        )

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_filters_reduce_to_greedy_and_temperature_widens(tiny_model, data_dir):
    # image positions (gen_image) and text positions (gen_text)
    for case in ["gen_image", "gen_text"]:
        kw = _case(data_dir, case)
        greedy = tiny_model.generate(**kw, max_new_tokens=20)
        # 1e-40: every score over it overflows float32; divided from the best score it is greedy
        for filters in [{"top_p": 1e-6}, {"top_k": 1}, {"temperature": 1e-4}, {"temperature": 1e-40}]:
            g = torch.Generator().manual_seed(0)
            sampled = tiny_model.generate(**kw, max_new_tokens=20, do_sample=True, generator=g, **filters)
            assert torch.equal(sampled, greedy), (case, filters)
        g = torch.Generator().manual_seed(0)
        hot = tiny_model.generate(**kw, max_new_tokens=20, do_sample=True, temperature=5.0, generator=g)
        assert not torch.equal(hot, greedy)


def test_filter_scores_worked_example():
    scores = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]])
    probs = scores.softmax(-1)  # 0.665, 0.245, 0.090, 0
    kept = torch.isfinite(filter_scores(scores, 1.0, None, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.665 < 0.7, so the second token stays
    assert torch.isfinite(filter_scores(scores, 1.0, 2, None)).tolist() == [[True, True, False, False]]
    assert torch.allclose(filter_scores(scores, 2.0, None, None).softmax(-1), (scores / 2).softmax(-1))
    assert probs[0, 0] < 0.7


def test_eos_stops_a_row_and_pads_it(tiny_model, data_dir):
    kw = _case(data_dir, "gen_text")
    N = kw["input_ids"].shape[-1]
    greedy = tiny_model.generate(**kw, max_new_tokens=12)
    eos = int(greedy[0, 1, N + 2])  # the third token of row 1 becomes "eos"
    assert eos not in greedy[0, 0, N:].tolist()
    out = tiny_model.generate(**kw, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out[:, 1, : N + 3], greedy[:, 1, : N + 3])
    assert (out[:, 1, N + 3 :] == 0).all()
    assert torch.equal(out[:, 0], greedy[:, 0])


def test_beam_search_one_beam_is_greedy(tiny_model, data_dir):
    kw = _case(data_dir, "gen_text")
    greedy = tiny_model.generate(**kw, max_new_tokens=6)
    assert torch.equal(tiny_model.generate(**kw, max_new_tokens=6, num_beams=1), greedy)
    assert tiny_model.generate(**kw, max_new_tokens=6, num_beams=2, eos_token_id=10**6).shape == greedy.shape


def test_beam_search_with_full_width_finds_the_best_two_token_continuation(tiny_model, data_dir):
    """With num_beams = vocab the search is exhaustive over two tokens: compare with brute force."""
    kw = _case(data_dir, "gen_text")
    V, N = tiny_model.config.vocab_size, kw["input_ids"].shape[-1]
    out = tiny_model.generate(
        **kw,
        max_new_tokens=2,
        num_beams=V,
        eos_token_id=10**6,
        length_penalty=0.0,
        return_dict_in_generate=True,
    )
    for b in range(2):
        row = {k: v[..., b : b + 1, :] if k == "input_ids" else v[b : b + 1] for k, v in kw.items()}
        first = tiny_model(**row, use_cache=False).logits[0, 0, -1, :V].log_softmax(-1)  # (V,)
        ids = torch.cat([row["input_ids"].expand(-1, V, -1), torch.arange(V).expand(2, V)[..., None]], -1)
        extended = {
            "input_ids": ids,
            "attention_mask": torch.cat(
                [row["attention_mask"], torch.ones(1, 1, dtype=torch.long)], -1
            ).expand(V, -1),
            "vision_indices": torch.cat([row["vision_indices"], torch.full((1, 1), 18)], -1).expand(V, -1),
            "contiguous_signal": torch.cat([row["contiguous_signal"], torch.zeros(1, 1, 32)], 1).expand(
                V, -1, -1
            ),
        }
        mask = extended["attention_mask"]
        extended["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        with torch.no_grad():
            second = tiny_model(**extended, use_cache=False).logits[0, :, -1, :V].log_softmax(-1)  # (V, V)
        total = first[:, None] + second
        best = divmod(int(total.argmax()), V)
        assert out.sequences[0, b, N:].tolist() == list(best)
        assert abs(out.sequences_scores[b].item() - total.max().item()) < 1e-4
