"""One checkpoint resolver (libra/pretrained.py): every kind of checkpoint of one run loads to the same
model. An export, the run dir, a DeepSpeed step folder (ZeRO-2 and ZeRO-3) and the official release
layout (vision tokenizer as `vqgan.ckpt`) give identical logits; each is reported for what it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_train_config
from safetensors.torch import load_file, save_file

from libra import LibraForCausalLM
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
    assert "passed over step_000003.tmp: never finished writing" in resolved.reason
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


def _edit_weights(folder: Path, drop: str | None = None, add: str | None = None) -> None:
    weights = load_file(folder / "model.safetensors")
    if drop:
        del weights[drop]
    if add:
        weights[add] = torch.zeros(64, 32)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **values}))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda f: _edit_weights(f, drop="model.layers.1.input_layernorm.weight"),
            "1 weight.s. missing .*: model.layers.1.input_layernorm.weight",
        ),
        (
            lambda f: _edit_weights(f, add="model.layers.7.mlp.up_proj.weight"),
            "1 weight.s. with no place in the model: model.layers.7.mlp.up_proj.weight",
        ),
        (lambda f: _edit_config(f, num_hidden_layers=3), "33 weight.s. missing .*: model.layers.2."),
        (lambda f: _edit_config(f, num_hidden_layers=1), "33 weight.s. with no place .*: model.layers.1."),
        (
            lambda f: _edit_config(f, vocab_size=900),
            r"of another shape: lm_head.weight \(800, 32\) vs \(900, 32\)",
        ),
    ],
    ids=["missing_key", "extra_key", "config_more_layers", "config_fewer_layers", "config_other_vocab"],
)
def test_weights_that_do_not_fill_the_config_exactly_are_refused(tiny_export, tmp_path, damage, expected):
    """transformers leaves a weight the files lack at random and drops one the model has no place for,
    with a warning only; every loader of a Libra checkpoint refuses both, naming the weights."""
    folder = shutil.copytree(tiny_export, tmp_path / "damaged")
    damage(folder)
    for load in (
        lambda: load_pretrained(folder, device="cpu"),
        lambda: LibraForCausalLM.from_pretrained(folder),
    ):
        with pytest.raises(
            ValueError, match=f"checkpoint {folder}: its weight files do not match .*{expected}"
        ):
            load()
    # the undamaged folder loads, and the loading info transformers returns on request still comes back
    model, info = LibraForCausalLM.from_pretrained(tiny_export, output_loading_info=True)
    assert isinstance(model, LibraForCausalLM) and not info["missing_keys"] and not info["unexpected_keys"]


def _shard(folder: Path) -> None:
    """model.safetensors split in two shards + index, the layout of the official release."""
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(weights)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), start=1):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({k: weights[k] for k in part}, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def _cut_short(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "error", "expected"),
    [
        (lambda f: _cut_short(f / "model.safetensors"), ValueError, "model.safetensors is damaged"),
        (
            lambda f: _cut_short(f / "vision_tokenizer.safetensors"),
            ValueError,
            "vision_tokenizer.safetensors is damaged",
        ),
        (
            lambda f: (_shard(f), (f / "model-00002-of-00002.safetensors").unlink()),
            FileNotFoundError,
            "model.safetensors.index.json names 1 weight file.s. that are not in .*: model-00002-of-00002",
        ),
        (
            lambda f: (_shard(f), (f / "model.safetensors.index.json").write_text("{")),
            ValueError,
            "model.safetensors.index.json is not a readable safetensors index",
        ),
        (
            lambda f: (f / "model.safetensors").unlink(),
            FileNotFoundError,
            "has a config.json but no model weights",
        ),
    ],
    ids=[
        "truncated",
        "truncated_vision_tokenizer",
        "index_names_a_missing_shard",
        "index_unreadable",
        "no_weights",
    ],
)
def test_damaged_or_missing_weight_files_are_named_before_loading(
    tiny_export, tmp_path, damage, error, expected
):
    """The safetensors loaders' own errors name no file ('incomplete metadata, file not fully covered');
    the resolver reads every header first and names the file, here and through a run dir."""
    run_dir = tmp_path / "run"
    folder = shutil.copytree(tiny_export, run_dir / "export")
    damage(folder)
    for path in (folder, run_dir):
        with pytest.raises(error, match=expected):
            resolve_pretrained(path)
    with pytest.raises(error, match=expected):
        load_pretrained(folder, device="cpu")
    # a sharded folder with all its shards loads like the single file
    sharded = shutil.copytree(tiny_export, tmp_path / "sharded")
    _shard(sharded)
    assert resolve_pretrained(sharded).kind == "pretrained"
    assert isinstance(LibraForCausalLM.from_pretrained(sharded), LibraForCausalLM)


def _deepspeed_run(tiny_export: Path, run_dir: Path) -> Path:
    """A run dir in seconds: model_files/ and one complete ZeRO 0-2 step folder of the tiny export's
    weights (what libra/train/checkpoint.py writes, without the optimizer state)."""
    from libra.durable_files import write_manifest

    shutil.copytree(tiny_export, run_dir / "model_files")
    (run_dir / "model_files" / "model.safetensors").unlink()  # config + processor files only
    step = run_dir / "checkpoints" / "step_000002"
    step.mkdir(parents=True)
    torch.save({"module": load_file(tiny_export / "model.safetensors")}, step / "mp_rank_00_model_states.pt")
    write_manifest(step, step=2, world_size=1, bad_streak=0, adapters_only=False)
    return step


def test_a_step_folder_missing_its_model_states_is_named_incomplete(tiny_export, tmp_path):
    step = _deepspeed_run(tiny_export, tmp_path / "run")
    assert resolve_pretrained(step).kind == "deepspeed_step"
    (step / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(FileNotFoundError, match="is incomplete: .*mp_rank_00_model_states.pt is missing"):
        resolve_pretrained(step)


def test_deepspeed_weights_that_do_not_fill_the_run_config_are_refused(tiny_export, tmp_path):
    step = _deepspeed_run(tiny_export, tmp_path / "run")
    _edit_config(tmp_path / "run" / "model_files", num_hidden_layers=3)
    config = tmp_path / "run" / "model_files" / "config.json"
    with pytest.raises(
        ValueError, match=f"{step}: its weight files do not match {config} .*33 weight.s. missing"
    ):
        load_pretrained(step, device="cpu")


def test_a_symlinked_step_folder_takes_the_files_of_its_own_run(tiny_export, tmp_path):
    """The config and processor of a step folder are its run's model_files/, wherever a link to it lies;
    not an unrelated export next to the link."""
    step = _deepspeed_run(tiny_export, tmp_path / "run")
    shutil.copytree(tiny_export, tmp_path / "export")  # another model, two levels above the link
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "best").symlink_to(step)
    resolved = resolve_pretrained(tmp_path / "links" / "best")
    assert resolved.files == (tmp_path / "run" / "model_files").resolve()
    assert "step 2" in resolved.reason
    torch.testing.assert_close(
        load_pretrained(resolved, device="cpu")[0].state_dict(),
        LibraForCausalLM.from_pretrained(tiny_export).state_dict(),
    )


def test_a_run_dir_names_the_newer_steps_it_passed_over(tiny_export, tmp_path):
    """A run dir falls back to its newest complete step and says why a newer one was not taken;
    with no complete step at all, the error says what the folders there are."""
    step = _deepspeed_run(tiny_export, tmp_path / "run")
    newer = step.parent / "step_000004"
    shutil.copytree(step, newer)
    (newer / "manifest.json").unlink()  # a save killed before its manifest
    resolved = resolve_pretrained(tmp_path / "run")
    assert resolved.weights == step
    assert resolved.reason.endswith(
        f"(step 2); passed over {newer.name}: no manifest.json (its save was interrupted before the end)"
    )
    shutil.rmtree(step)
    with pytest.raises(FileNotFoundError, match=f"checkpoints/step_\\*/; passed over {newer.name}: "):
        resolve_pretrained(tmp_path / "run")
