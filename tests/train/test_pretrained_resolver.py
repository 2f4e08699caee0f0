"""One checkpoint resolver (libra/pretrained.py): every kind of checkpoint of one run loads to the same
model. An export, the run dir, a DeepSpeed step folder (ZeRO-2 and ZeRO-3) and the official release
layout (vision tokenizer as `vqgan.ckpt`) give identical logits; each is reported for what it is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_train_config

from libra.pretrained import load_pretrained, resolve_pretrained, trained_for_text_to_image
from libra.tokenizer.samples import ConversationSample, Turn
from libra.train.recipe import train


def logits(folder: Path, image) -> torch.Tensor:
    model, processor = load_pretrained(folder, device="cpu")
    sample = ConversationSample([Turn("user", "<image>\nwhat colour is the shape?")], [image], key="x")
    with torch.no_grad():
        return model(**processor([sample], generation=True)).logits


def official_layout(export: Path, folder: Path) -> Path:
    """The export rewritten the way the release ships it: the vision tokenizer as `vqgan.ckpt`."""
    from libra.tokenizer.vision_tokenizer import CONFIG_NAME, VisionTokenizer

    shutil.copytree(export, folder)
    VisionTokenizer.from_pretrained(export).save_official_checkpoint(folder / "vqgan.ckpt")
    config = yaml.safe_load((folder / CONFIG_NAME).read_text())
    config["params"]["ckpt_path"] = "vqgan.ckpt"
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "vision_tokenizer.safetensors").unlink()
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", ["zero2", "zero3"])
def test_every_checkpoint_kind_loads_to_identical_logits(tmp_path, tiny_cache, deepspeed):
    from PIL import Image

    run_dir = tmp_path / "run"
    train(tiny_train_config(run_dir, tiny_cache, deepspeed=deepspeed, max_steps=2))
    step = run_dir / "checkpoints" / "step_000002"
    export = run_dir / "export"
    official = official_layout(export, tmp_path / "official")
    image = Image.new("RGB", (56, 56), (200, 30, 30))

    kinds = {path: resolve_pretrained(path) for path in (export, run_dir, step, official)}
    assert [k.kind for k in kinds.values()] == ["pretrained", "pretrained", "deepspeed_step", "pretrained"]
    assert "export folder" in kinds[export].reason and "official release layout" in kinds[official].reason
    assert kinds[run_dir].weights == export and "final export" in kinds[run_dir].reason
    assert kinds[step].files == run_dir / "model_files"

    reference = logits(export, image)
    for path in (run_dir, step, official):
        torch.testing.assert_close(logits(path, image), reference, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_run_dir_without_export_resolves_to_its_newest_complete_checkpoint(tmp_path, tiny_cache):
    run_dir = tmp_path / "run"
    train(tiny_train_config(run_dir, tiny_cache, max_steps=2, checkpoint_every=1, keep_last=3))
    shutil.rmtree(run_dir / "export")
    interrupted = run_dir / "checkpoints" / "step_000003.tmp"  # a save killed before its manifest
    shutil.copytree(run_dir / "checkpoints" / "step_000002", interrupted)
    (interrupted / "manifest.json").unlink()
    resolved = resolve_pretrained(run_dir)
    assert resolved.kind == "deepspeed_step" and resolved.weights.name == "step_000002"
    assert "without a final export" in resolved.reason and "step 2" in resolved.reason
    with pytest.raises(FileNotFoundError, match="is incomplete"):
        resolve_pretrained(interrupted)


def test_trained_for_text_to_image_follows_the_chain_of_bases():
    """An export's training record names its base; the answer is known only when the chain ends in
    fresh weights or in a run that saw text-to-image samples."""
    fresh = {"text_to_image_samples": 0, "init_from": None, "base": None}
    assert trained_for_text_to_image(fresh) is False
    assert trained_for_text_to_image({**fresh, "text_to_image_samples": 3}) is True
    on_t2i_base = {
        "text_to_image_samples": 0,
        "init_from": "stage1",
        "base": {**fresh, "text_to_image_samples": 5},
    }
    assert trained_for_text_to_image(on_t2i_base) is True
    on_fresh_base = {"text_to_image_samples": 0, "init_from": "stage1", "base": fresh}
    assert trained_for_text_to_image(on_fresh_base) is False
    # a base without a record (the official release): nothing to say
    assert trained_for_text_to_image({**fresh, "init_from": "/official/Libra-11B"}) is None
    assert trained_for_text_to_image(None) is None
