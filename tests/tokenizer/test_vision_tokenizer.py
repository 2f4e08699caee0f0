"""Vision tokenizer parity with the official code (vision_tokenizer_tiny) and its round trips."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from libra.tokenizer.convert_vqgan import convert
from libra.tokenizer.image_vocab import ImageVocab
from libra.tokenizer.vision_tokenizer import VisionTokenizer

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
VT_DIR = DATA_DIR / "vision_tokenizer_tiny"
MODEL_DIR = VT_DIR / "model"  # the tiny official-layout checkpoint folder


def test_fixture_parity_every_stage(vision_tokenizer, vt_expected):
    vt, e = vision_tokenizer, vt_expected
    x = e["pixel_values_pad"]
    with torch.no_grad():
        hidden = torch.stack(vt.clip_hidden_states(x, upto=5))
        assert (hidden - e["clip_hidden_states"]).abs().max() < 1e-5
        tokens = vt.encode(x)
        assert (tokens.features - e["continuous_signal"]).abs().max() < 1e-5
        pre = vt.features_to_latent(tokens.features)
        assert (pre - e["pre_quant"]).abs().max() < 1e-5
        projected = vt.quantize.project(pre.flatten(2).transpose(1, 2))
        assert (projected - e["lfq_projected"]).abs().max() < 1e-5
        assert torch.equal(tokens.indices.view(5, 4, 4, 2), e["indices"])
        latent = vt.indices_to_latent(tokens.indices)
        assert (latent - e["codes"]).abs().max() < 1e-5
        assert (latent - e["quantized"]).abs().max() < 1e-5
        bits = vt.quantize.indices_to_bits(tokens.indices).transpose(1, 2).unflatten(-1, (4, 4))
        assert torch.equal(bits, e["code_bits"])
        post = vt.post_quant_conv(latent)
        assert (post - e["post_quant"]).abs().max() < 1e-5
        assert (vt.decoder.forward_mid(post) - e["decoder_mid"]).abs().max() < 1e-5
        assert (vt.decode_indices(tokens.indices) - e["reconstruction"]).abs().max() < 1e-4


def test_token_ids_match_fixture(vision_tokenizer, vt_expected):
    vocab = ImageVocab(text_vocab_size=32000, codebook_size=16, num_codebook=2, grid=4)
    assert (vocab.boi_id, vocab.eoi_id, vocab.tokens_per_image) == (32016, 32017, 18)
    tokens = vision_tokenizer.encode(vt_expected["pixel_values_pad"])
    ids = vocab.indices_to_ids(tokens.indices)
    assert torch.equal(ids, vt_expected["token_ids"])
    assert torch.equal(vocab.ids_to_indices(ids), tokens.indices)


def test_every_code_round_trips(vision_tokenizer):
    lfq = vision_tokenizer.quantize
    every = torch.arange(lfq.codebook_size).unsqueeze(-1).expand(-1, lfq.num_codebook)  # (16, K)
    assert torch.equal(lfq.bits_to_indices(lfq.indices_to_bits(every)), every)
    # codes -> indices through the real path: the code vector projected back in gives the same signs
    codes = lfq.indices_to_bits(every)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        lfq.indices_to_bits(torch.tensor([[16, 0]]))


def test_frozen_and_eval_by_construction(vision_tokenizer):
    assert not any(p.requires_grad for p in vision_tokenizer.parameters())
    vision_tokenizer.train()
    assert not vision_tokenizer.training and not vision_tokenizer.clip.training


def test_safetensors_export_round_trip(vision_tokenizer, vt_expected, tmp_path):
    vision_tokenizer.save_pretrained(tmp_path)
    config = yaml.safe_load((tmp_path / "vision_tokenizer_config.yaml").read_text())
    assert config["params"]["ckpt_path"] == "vision_tokenizer.safetensors"
    loaded = VisionTokenizer.from_pretrained(tmp_path)
    x = vt_expected["pixel_values_pad"]
    a, b = vision_tokenizer.encode(x), loaded.encode(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.features, b.features)
    assert loaded.fingerprint() == vision_tokenizer.fingerprint()


def test_official_checkpoint_export_matches_the_official_file(vision_tokenizer, tmp_path):
    official = torch.load(MODEL_DIR / "vqgan.ckpt", weights_only=True)["state_dict"]
    official = {k: v for k, v in official.items() if not k.startswith("loss.")}
    ours = vision_tokenizer.official_state_dict()
    assert sorted(ours) == sorted(official)
    assert all(torch.equal(ours[k], official[k]) and ours[k].dtype == official[k].dtype for k in official)


def test_convert_untrusted_pickle_once(vision_tokenizer, vt_expected, tmp_path):
    for item in MODEL_DIR.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    (tmp_path / "vqgan.ckpt").unlink()
    state = vision_tokenizer.official_state_dict()
    # a pickled non-tensor object (as Lightning checkpoints carry) makes weights_only refuse the file
    torch.save({"state_dict": state, "hparams": ImageVocab(1, 2, 1, 1)}, tmp_path / "vqgan.ckpt")
    with pytest.raises(RuntimeError, match="python -m libra.tokenizer.convert_vqgan"):
        VisionTokenizer.from_pretrained(tmp_path)
    convert(tmp_path)
    converted = VisionTokenizer.from_pretrained(tmp_path)
    assert torch.equal(
        converted.encode(vt_expected["pixel_values_pad"]).indices.view(5, 4, 4, 2), vt_expected["indices"]
    )


def test_encode_ignores_autocast(vision_tokenizer, vt_expected):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = vision_tokenizer.encode(vt_expected["pixel_values_pad"])
    assert tokens.features.dtype == torch.float32
    assert torch.equal(tokens.indices.view(5, 4, 4, 2), vt_expected["indices"])


def test_bf16_option(vt_expected):
    vt = VisionTokenizer.from_pretrained(MODEL_DIR, dtype=torch.bfloat16)
    tokens = vt.encode(vt_expected["pixel_values_pad"])
    assert tokens.features.dtype == torch.bfloat16
    # smallest |pre-sign value| is 0.0038 in fp32: bf16 may flip a few bits, never most (docs/design.md B20)
    agree = (tokens.indices.view(5, 4, 4, 2) == vt_expected["indices"]).float().mean()
    assert agree > 0.8
