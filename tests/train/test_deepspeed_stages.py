"""The offload set-ups train through the one engine path (one process, gloo on the CPU) and agree
with stage 0; ZeRO-2 and ZeRO-3 without offload run on two ranks in test_torchrun.py."""

import pytest
from conftest import tiny_train_config

from libra.tracking import read_metrics
from libra.train.recipe import train


def two_step_losses(run_dir, cache, deepspeed: str) -> list[float]:
    train(tiny_train_config(run_dir, cache, deepspeed=deepspeed, max_steps=2))
    return [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]


@pytest.fixture(scope="module")
def stage0_losses(tmp_path_factory, tiny_cache) -> list[float]:
    return two_step_losses(tmp_path_factory.mktemp("stage0"), tiny_cache, "stage0")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2_offload", "zero3_offload"])
def test_stage_trains_and_matches_stage0(stage, tmp_path, tiny_cache, stage0_losses):
    losses = two_step_losses(tmp_path, tiny_cache, stage)
    assert len(losses) == 2
    # same data, same math: sharding and offloading change where numbers live, not their values
    assert losses == pytest.approx(stage0_losses, rel=1e-4)
