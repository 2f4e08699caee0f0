"""Runs with several processes and sweeps with storage, through `python run.py` as users start them (slow).

* `cluster=torchrun`, 2 gloo ranks: train, checkpoint, resume, final benchmark (predictions of both
  ranks merged);
* `torchrun --nproc_per_node=2 run.py ...`: an outside launcher; the ranks agree on rank 0's config
  and run dir;
* two "nodes" on one machine over loopback: `cluster=torchrun cluster.nodes=2`, one command per node;
* the optuna sweep with a sqlite storage: 2 trials, then 1 more on a second launch into the same study.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from launch_env import child_environ, free_port

from libra import tracking

from .conftest import ROOT, run_py

SMALL = [
    "synthetic.train_images=48",
    "synthetic.val_images=8",
    "synthetic.test_images=8",
    "synthetic.images_per_shard=48",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "trainer.micro_batch_size=2",
    "trainer.log_every=1",
    "trainer.eval_batches=1",
    "trainer.num_workers=0",
    "benchmark.synthetic_vqa.max_items=7",  # not a multiple of the 2 ranks
    "benchmark.synthetic_caption.max_items=5",
    "benchmark.synthetic_vqa.batch_size=2",
    "benchmark.synthetic_caption.batch_size=1",
]


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory) -> dict:
    return {"LIBRA_CACHE_DIR": str(tmp_path_factory.mktemp("libra-cache"))}


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in tracking.read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]


def check_benchmark(run_dir: Path, vqa_items: int = 7, caption_items: int = 5) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"benchmark/synthetic_vqa/accuracy", "baseline/synthetic_vqa/accuracy"} <= set(metrics)
    vqa = json.loads((run_dir / "benchmark" / "synthetic_vqa" / "predictions.json").read_text())
    captions = json.loads((run_dir / "benchmark" / "synthetic_caption" / "predictions.json").read_text())
    assert (len(vqa), len(captions)) == (vqa_items, caption_items)  # every item once, from both ranks
    return metrics


@pytest.mark.slow
@pytest.mark.distributed
def test_cluster_torchrun_trains_checkpoints_resumes_and_benchmarks(tmp_path, cache_env):
    run_dir = tmp_path / "run"
    two_ranks = [
        "cluster=torchrun",
        "cluster.gpus_per_node=2",
        "deepspeed=zero2",
        "trainer.global_batch_size=4",
    ]
    args = [*two_ranks, *SMALL, "trainer.max_steps=2", "trainer.checkpoint_every=1", "trainer.eval_every=0"]
    first = run_py(
        [
            *args,
            f"cluster.master_port={free_port()}",
            "trainer.benchmark_at_end=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=cache_env,
    )
    assert first.returncode == 0, first.stderr[-4000:]
    assert (run_dir / "checkpoints" / "step_000002").is_dir()
    # the same run dir, two more steps: resumed from step 2, then the final benchmark on both ranks
    args = [a if a != "trainer.max_steps=2" else "trainer.max_steps=4" for a in args]
    second = run_py(
        [*args, f"cluster.master_port={free_port()}", "resume=auto", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=cache_env,
    )
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stdout + second.stderr
    assert train_steps(run_dir) == [1, 2, 3, 4]
    check_benchmark(run_dir)


@pytest.mark.slow
@pytest.mark.distributed
def test_resuming_a_two_rank_run_with_one_process_is_refused(tmp_path, cache_env):
    """Each rank's data position is its share of a 2-rank order: one process would continue rank 0's
    share as if it were the whole order (stage 0 loads without a complaint) instead of stopping."""
    run_dir = tmp_path / "run"
    args = [*SMALL, "trainer.global_batch_size=4", "trainer.eval_every=0", "trainer.benchmark_at_end=false"]
    args += ["logger=none", f"hydra.run.dir={run_dir}"]
    two_ranks = ["cluster=torchrun", "cluster.gpus_per_node=2", f"cluster.master_port={free_port()}"]
    first = run_py([*args, *two_ranks, "trainer.max_steps=1"], cwd=tmp_path, env=cache_env)
    assert first.returncode == 0, first.stderr[-4000:]
    second = run_py([*args, "trainer.max_steps=2", "resume=auto"], cwd=tmp_path, env=cache_env)
    assert second.returncode != 0
    step = run_dir / "checkpoints" / "step_000001"
    assert f"cannot resume from {step}: it was written by 2 rank(s) and this job has 1" in second.stderr
    assert train_steps(run_dir) == [1]  # nothing trained on the wrong data position


@pytest.mark.slow
@pytest.mark.distributed
def test_run_py_under_an_outside_torchrun_runs_rank0s_config(tmp_path, cache_env):
    """`torchrun --nproc_per_node=2 run.py`: each rank composes, Hydra gives each a run dir of its own
    clock; rank 0's config and run dir win and the other rank's stray dir is removed."""
    env = child_environ(WANDB_MODE="offline", PYTHONPATH=str(ROOT), **cache_env)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2"]
    command += [f"--master_port={free_port()}", str(ROOT / "run.py"), *SMALL, "trainer.global_batch_size=4"]
    command += ["trainer.max_steps=2", "trainer.eval_every=0", "logger=none"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (tmp_path / "outputs" / "tiny").iterdir()  # one run dir for both ranks
    ds = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (4, 1)  # 2 ranks x micro 2
    assert train_steps(run_dir) == [1, 2]
    check_benchmark(run_dir)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_over_loopback_share_one_run(tmp_path, cache_env):
    """`cluster=torchrun cluster.nodes=2`: the same command on each "node" (here two processes of this
    machine), static rendezvous on 127.0.0.1, one shared run dir."""
    run_dir, port = tmp_path / "shared-run", free_port()
    args = ["cluster=torchrun", "cluster.nodes=2", "cluster.gpus_per_node=1", f"cluster.master_port={port}"]
    args += [*SMALL, "trainer.global_batch_size=4", "trainer.max_steps=2", "trainer.eval_every=0"]
    args += ["trainer.benchmark_at_end=false", "logger=none", f"hydra.run.dir={run_dir}"]
    env = child_environ(WANDB_MODE="offline", HYDRA_FULL_ERROR="1", PYTHONPATH=str(ROOT), **cache_env)
    nodes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args, f"cluster.node_rank={node}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-4000:]
    ds = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (4, 1)  # 2 nodes x 1 x micro 2
    assert train_steps(run_dir) == [1, 2]
    assert len(list((run_dir / "launch").iterdir())) == 2  # each node's own config
    assert (run_dir / "config.yaml").is_file() and (run_dir / "export" / "config.json").is_file()


@pytest.mark.slow
def test_optuna_sweep_resumes_its_study_from_sqlite(tmp_path, cache_env):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["-m", "sweep=lr_optuna", f"hydra.sweeper.storage={storage}", *SMALL]
    args += ["trainer.global_batch_size=2", "trainer.max_steps=1", "trainer.eval_every=0", "logger=none"]
    first = run_py([*args, "hydra.sweeper.n_trials=2"], cwd=tmp_path, env=cache_env)
    assert first.returncode == 0, first.stderr[-4000:]
    second = run_py([*args, "hydra.sweeper.n_trials=1"], cwd=tmp_path, env=cache_env)
    assert second.returncode == 0, second.stderr[-4000:]
    study = optuna.load_study(study_name="libra-lr", storage=storage)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3
    assert len({t.params["optimizer.lr"] for t in trials}) == 3
    assert all(0 <= t.value <= 100 for t in trials)  # synthetic VQA accuracy read from metrics.json


@pytest.mark.slow
def test_optuna_sweep_without_its_objective_stops_before_training(tmp_path, cache_env):
    """`objective` comes from the final benchmark's metrics.json: with the benchmark off, every trial
    trained in full and only then failed on the missing file."""
    args = ["-m", "sweep=lr_optuna", "hydra.sweeper.n_trials=1", *SMALL, "trainer.global_batch_size=2"]
    args += ["trainer.max_steps=1", "trainer.eval_every=0", "trainer.benchmark_at_end=false", "logger=none"]
    result = run_py(args, cwd=tmp_path, env=cache_env)
    assert result.returncode != 0
    assert "objective: 'benchmark/synthetic_vqa/accuracy' is read from the final benchmark's" in result.stderr
    assert "fix: trainer.benchmark_at_end=true" in result.stderr
    assert not list(tmp_path.glob("multirun/**/metrics.jsonl"))  # no trial trained


def test_a_local_multirun_validates_every_job_before_the_first_starts(tmp_path, cache_env):
    """The launcher of cluster=local (hydra_plugins/libra_local_launcher) validates all points of a
    sweep first: the bad second point failed only after the first had trained in full."""
    args = ["-m", "optimizer.lr=1e-3,0", *SMALL, "trainer.max_steps=1", "logger=none"]
    result = run_py(args, cwd=tmp_path, env=cache_env)
    assert result.returncode != 0
    assert "optimizer.lr: 0 must be > 0" in result.stderr
    assert not list(tmp_path.glob("multirun/**/metrics.jsonl"))  # the first point did not train
