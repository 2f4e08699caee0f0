"""Parity with the official reference: every case of both golden fixtures (forward and generation)."""

import pytest
import torch

from libra.model import LibraForCausalLM

TOL = 1e-5


def _finite_diff(ours, ref):
    """Max abs difference on finite entries after checking the +-inf layout is identical."""
    assert torch.equal(torch.isposinf(ours), torch.isposinf(ref)), "+inf layout differs"
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref)), "-inf layout differs"
    finite = torch.isfinite(ref)
    return (ours[finite] - ref[finite]).abs().max().item()


def test_forward_cases(fixture):
    for case in fixture.cases["forward_cases"]:
        inputs = fixture.case_inputs(case)
        with torch.no_grad():
            out = fixture.model(**inputs, **case["kwargs"], output_hidden_states=True)
        real = inputs["attention_mask"].bool()  # logits on real-token positions
        expected = case["expected"]
        logits = fixture.expected[expected["logits"]]
        assert out.logits.shape == logits.shape
        assert _finite_diff(out.logits[:, real], logits[:, real]) < TOL, case["name"]
        assert abs(out.loss.item() - fixture.expected[expected["loss"]].item()) < TOL, case["name"]
        if "hidden_states" in expected:
            ref = fixture.expected[expected["hidden_states"]]
            ours = torch.stack(out.hidden_states)
            assert ours.shape == ref.shape
            assert (ours[:, real] - ref[:, real]).abs().max().item() < TOL


DECODING = {
    "cached": {"use_cache": True},
    "uncached": {"use_cache": False},
    "static": {"use_cache": True, "cache_implementation": "static"},  # the path compile=True compiles
}


@pytest.mark.parametrize("decoding", sorted(DECODING))
def test_generation_cases(fixture, decoding):
    for case in fixture.cases["generation_cases"]:
        kwargs = {**case["kwargs"], **DECODING[decoding]}
        out = fixture.model.generate(
            **fixture.case_inputs(case),
            **kwargs,
            strict_image_structure=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
        expected = case["expected"]
        assert torch.equal(out.sequences, fixture.expected[expected["sequences"]]), case["name"]
        assert torch.equal(out.sequences, fixture.expected[expected["nocache_sequences"]])
        scores = torch.stack(out.scores).transpose(1, 2)  # (T, B, K, vocab)
        ref = fixture.expected[expected["scores"]].transpose(1, 2)
        forced = fixture.expected[expected["forced_newline_steps"]]  # (T, B)
        assert _finite_diff(scores[~forced], ref[~forced]) < TOL, case["name"]
        # forced steps: exactly the reference's rows, newline chosen in every codebook
        newline = fixture.model.config.newline_token_id
        ours_forced = torch.isposinf(scores[..., newline]).all(-1)
        assert torch.equal(ours_forced, forced)
        prompt = fixture.inputs[case["inputs"]["input_ids"]].shape[-1]
        new_tokens = out.sequences[:, :, prompt:].permute(2, 1, 0)  # (T, B, K)
        assert (new_tokens[forced] == newline).all()


def test_fixture_loads_through_auto_class(data_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(data_dir / "libra_reference_tiny")
    assert isinstance(model, LibraForCausalLM)
    assert model.config.vision_codebook_num == 2 and model.config.contiguous_signal_size == 32


def test_save_and_reload_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = LibraForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
