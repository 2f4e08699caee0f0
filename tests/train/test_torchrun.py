"""Two ranks under torchrun (gloo on the CPU): ZeRO-2 and ZeRO-3 train, checkpoint and export, and agree.

The launch path is the real one: the resolved config is written to the run dir and every rank runs
`python -m libra.launch <run dir>` (what `cluster=torchrun` starts).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config
from launch_env import child_environ
from omegaconf import OmegaConf

from libra.model import LibraForCausalLM
from libra.tracking import read_metrics
from libra.train.checkpoint import list_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
REPO = Path(__file__).resolve().parents[2]


def run_two_ranks(run_dir: Path, cache: Path, stage: str, port: int) -> None:
    cfg = tiny_train_config(
        run_dir,
        cache,
        deepspeed=stage,
        max_steps=3,
        checkpoint_every=2,
        global_batch_size=4,
        micro_batch_size=1,
    )
    run_dir.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    command += ["-m", "libra.launch", str(run_dir / "config.yaml")]
    env = child_environ(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]


def test_zero2_and_zero3_train_checkpoint_export_and_agree(tmp_path, tiny_cache):
    # The data/tokenizer cache is built once here so the two ranks do not both build it.
    from hydra.utils import instantiate

    instantiate(tiny_train_config(tmp_path / "warm", tiny_cache).tokenizer)
    runs = {}
    for stage, port in (("zero2", 29741), ("zero3", 29742)):
        run = tmp_path / stage
        run_two_ranks(run, tiny_cache, stage, port)
        checkpoints = list_checkpoints(run)
        assert [c.name for c in checkpoints] == ["step_000002", "step_000003"]
        for checkpoint in checkpoints:  # one train state per rank, optimizer shards per rank
            assert {p.name for p in checkpoint.glob("train_state_rank*.pt")} == {
                "train_state_rank0.pt",
                "train_state_rank1.pt",
            }
            assert len(list(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))) == 2
        runs[stage] = run
    loss = {
        s: [r["train/loss"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
        for s, run in runs.items()
    }
    assert len(loss["zero2"]) == 3
    assert loss["zero3"] == pytest.approx(loss["zero2"], rel=1e-4)
    # ZeRO-3's export is gathered: full tensors equal to ZeRO-2's (same math, different sharding)
    z2 = LibraForCausalLM.from_pretrained(runs["zero2"] / "export").state_dict()
    z3 = LibraForCausalLM.from_pretrained(runs["zero3"] / "export").state_dict()
    assert z2.keys() == z3.keys()
    for name in z2:
        assert z3[name].shape == z2[name].shape and z3[name].numel() > 0, name
        torch.testing.assert_close(z3[name], z2[name], rtol=1e-4, atol=1e-5, msg=name)
