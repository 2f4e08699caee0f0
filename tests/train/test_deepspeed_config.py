"""Generated DeepSpeed JSON: explicit values, clipping in all stages (docs/design.md B6), consistent sizes."""

import json

import pytest

from libra.train.deepspeed_config import (
    ZeroSettings,
    deepspeed_config,
    gradient_accumulation_steps,
    write_deepspeed_config,
)


def _all_values(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _all_values(value)
    else:
        yield node


@pytest.mark.parametrize(
    "zero",
    [
        ZeroSettings(stage=0),
        ZeroSettings(stage=2),
        ZeroSettings(stage=2, offload_optimizer=True),
        ZeroSettings(stage=3),
        ZeroSettings(stage=3, offload_optimizer=True, offload_param=True),
    ],
)
def test_every_stage_clips_and_has_no_auto(zero, tmp_path):
    config = deepspeed_config(
        zero, global_batch_size=64, micro_batch_size=4, world_size=8, precision="bf16", grad_clip=1.0
    )
    assert config["gradient_clipping"] == 1.0
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 64 and config["train_micro_batch_size_per_gpu"] == 4
    assert config["bf16"] == {"enabled": True}
    assert config["zero_optimization"]["stage"] == zero.stage
    assert "auto" not in list(_all_values(config))
    path = write_deepspeed_config(config, tmp_path)
    assert json.loads(path.read_text()) == config


def test_zero3_gathers_weights_for_export_and_offload_blocks():
    block = ZeroSettings(stage=3, offload_optimizer=True, offload_param=True).zero_block()
    assert block["stage3_gather_16bit_weights_on_model_save"] is True
    assert block["offload_optimizer"]["device"] == "cpu"
    assert block["offload_param"]["device"] == "cpu"
    assert "offload_param" not in ZeroSettings(stage=2, offload_optimizer=True).zero_block()


def test_accumulation_is_derived_and_bad_sizes_are_refused():
    assert gradient_accumulation_steps(1280, 8, 40) == 4  # the official stage-1 numbers
    assert gradient_accumulation_steps(128, 2, 8) == 8  # official stage 2
    # the pre-launch check's message (libra/validation.py batch_problems)
    with pytest.raises(ValueError, match="global_batch_size: 100 is not a multiple"):
        gradient_accumulation_steps(100, 8, 2)
    with pytest.raises(ValueError, match="offload_param"):
        ZeroSettings(stage=2, offload_param=True)
    with pytest.raises(ValueError, match="grad_clip"):
        deepspeed_config(ZeroSettings(stage=3), 8, 8, 1, "fp32", grad_clip=0.0)
    with pytest.raises(ValueError, match="precision"):
        deepspeed_config(ZeroSettings(), 8, 8, 1, "fp16", grad_clip=1.0)


@pytest.mark.parametrize(
    ("build", "changes"),
    [
        (
            lambda: ZeroSettings(stage=2, offload_param=True),
            {"deepspeed": {"stage": 2, "offload_param": True}},
        ),
        (lambda: ZeroSettings(offload_optimizer=True), {"deepspeed": {"offload_optimizer": True}}),
        (lambda: ZeroSettings(stage=5), {"deepspeed": {"stage": 5}}),
        (lambda: gradient_accumulation_steps(10, 4, 1), {"trainer": {"global_batch_size": 10}}),
        (lambda: deepspeed_config(ZeroSettings(), 8, 4, 1, "fp16", 1.0), {"trainer": {"precision": "fp16"}}),
        (lambda: deepspeed_config(ZeroSettings(), 8, 4, 1, "fp32", -1.0), {"trainer": {"grad_clip": -1.0}}),
    ],
    ids=["offload_param", "offload_optimizer", "stage", "batch", "precision", "grad_clip"],
)
def test_the_builder_refuses_with_the_pre_launch_message(build, changes):
    """One rule, one message: what deepspeed_config.py raises is what validate() says of the config."""
    from omegaconf import OmegaConf

    from libra.validation import ConfigError, validate

    cfg = OmegaConf.create(
        {
            "task": "train",
            **dict.fromkeys(("seed", "max_new_tokens"), 1),
            **dict.fromkeys(("checkpoint", "resume", "objective", "prompt", "image"), None),
            "temperature": 0.0,
            "cluster": {"launcher": "local", "nodes": 1, "gpus_per_node": 1},
            "trainer": {"global_batch_size": 8, "micro_batch_size": 4, "precision": "fp32", "grad_clip": 1.0},
            "deepspeed": {"stage": 0},
        }
    )
    cfg.merge_with(changes)
    with pytest.raises(ConfigError) as from_builder:
        build()
    with pytest.raises(ConfigError) as from_validate:
        validate(cfg)
    assert str(from_builder.value) == str(from_validate.value)
