"""run.py end to end without training: bad overrides fail before any work, the SLURM dry run renders
the submission, torchrun gets one config and one run dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from libra import launch
from libra.validation import ConfigError, validate

from .conftest import compose_config, run_py


def test_bad_override_fails_before_any_work(tmp_path):
    result = run_py(["trainer.global_batch_size=10", "trainer.micro_batch_size=4"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "trainer.global_batch_size: 10 is not a multiple of trainer.micro_batch_size (4)" in result.stderr
    assert "fix: trainer.global_batch_size=" in result.stderr
    # nothing ran: the run dir holds only what Hydra writes itself (no config.yaml, no metrics)
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert all({p.name for p in d.iterdir()} <= {".hydra", "run.log"} for d in run_dirs)


def test_unknown_value_names_the_key(tmp_path):
    result = run_py(["trainer.precision=fp8"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "trainer.precision: 'fp8' is not one of fp32 | bf16" in result.stderr


def test_slurm_dry_run_renders_the_submission(tmp_path):
    result = run_py(
        [
            "experiment=pretrain",
            "tokenizer.text_folder=/ckpt/llama-2-7b-chat-hf",
            "tokenizer.vision_folder=/ckpt/libra-vision-tokenizer",
            "data.shards='/data/laion/{00000..00009}.tar'",
            "cluster=slurm",
            "cluster.nodes=5",
            "cluster.partition=gpu",
            "cluster.dry_run=true",
            "cluster.setup=[module load cuda]",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in [
        "#SBATCH --nodes=5",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=10",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=4320",
        "#SBATCH --job-name=libra-pretrain",
        "module load cuda",
    ]:
        assert line in out, f"{line!r} missing from:\n{out}"
    assert "-m submitit.core._submit" in out
    assert "# dry run: 1 job(s) not submitted" in out
    assert not list(tmp_path.rglob("*.pkl")), "a dry run must not pickle jobs for submission"


def test_slurm_dry_run_of_a_sweep_is_one_array(tmp_path):
    result = run_py(
        [
            "cluster=slurm",
            "cluster.nodes=1",
            "cluster.gpus_per_node=4",
            "cluster.dry_run=true",
            "trainer.micro_batch_size=2",
            "trainer.global_batch_size=8",
            "optimizer.lr=1e-4,3e-4",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "#SBATCH --array=0-1%2" in result.stdout
    assert "# job 1: cluster=slurm" in result.stdout and "optimizer.lr=0.0003" in result.stdout


def test_slurm_validates_every_job_before_submitting(tmp_path):
    result = run_py(
        [
            "cluster=slurm",
            "cluster.nodes=2",
            "cluster.dry_run=true",
            "trainer.micro_batch_size=2",
            "trainer.global_batch_size=128,100",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    assert "trainer.global_batch_size: 100 is not a multiple" in result.stderr
    assert "#SBATCH" not in result.stdout


def test_torchrun_gets_one_config_and_one_run_dir(tmp_path, hydra_cleared):
    cfg = compose_config(
        ["cluster=torchrun", "cluster.gpus_per_node=2", "trainer.global_batch_size=16"], tmp_path
    )
    launch.record_run(cfg, tmp_path, ["cluster=torchrun"])
    command = launch.torchrun_command(cfg, tmp_path / "config.yaml")
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_port=29500",
        "-m",
        "libra.launch",
        str(tmp_path / "config.yaml"),
    ]
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.run_dir == str(tmp_path)  # resolved: every rank reads the same run dir
    assert saved.name == "tiny" and saved.cluster.gpus_per_node == 2
    assert (tmp_path / "overrides.txt").read_text() == "cluster=torchrun\n"
    assert "commit:" in (tmp_path / "git.txt").read_text()
    assert "omegaconf==" in (tmp_path / "requirements.txt").read_text()


@pytest.mark.parametrize(
    "rendezvous, expected",
    [
        (["cluster.node_rank=1"], ["--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29600"]),
        (
            ["cluster.rdzv_id=job7"],
            ["--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.1:29600", "--rdzv_id=job7"],
        ),
    ],
)
def test_torchrun_on_several_nodes_names_the_rendezvous(tmp_path, hydra_cleared, rendezvous, expected):
    overrides = ["cluster=torchrun", "cluster.nodes=2", "cluster.master_addr=10.0.0.1"]
    overrides += ["cluster.master_port=29600", "trainer.global_batch_size=16", *rendezvous]
    cfg = compose_config(overrides, tmp_path)
    config_file = launch.write_node_config(cfg, tmp_path, overrides)
    assert config_file.parent.parent == tmp_path / "launch"
    assert (config_file.parent / "overrides.txt").read_text().splitlines() == overrides
    command = launch.torchrun_command(cfg, config_file)
    assert command[3:5] == ["--nnodes=2", "--nproc_per_node=2"]
    assert command[5:-3] == expected and command[-1] == str(config_file)


def test_several_nodes_need_a_node_rank_or_a_rendezvous_id(hydra_cleared):
    cfg = compose_config(["cluster=torchrun", "cluster.nodes=2", "cluster.node_rank=2"])
    with pytest.raises(ConfigError, match="cluster.node_rank: 2: with 2 nodes"):
        validate(cfg)


def _not_run(cfg):
    raise AssertionError("the task ran although the launch was refused")


def test_several_nodes_need_a_shared_run_dir(tmp_path, hydra_cleared):
    cfg = compose_config(["cluster=torchrun", "cluster.nodes=2", "trainer.global_batch_size=16"], tmp_path)
    with pytest.raises(ConfigError, match="hydra.run.dir=/shared/runs/<name>"):
        launch.launch(_not_run, cfg, ["cluster=torchrun", "cluster.nodes=2"])


def test_objective_is_read_from_metrics_json(tmp_path, hydra_cleared):
    cfg = compose_config(["objective=benchmark/synthetic_vqa/accuracy"], tmp_path)
    (tmp_path / "metrics.json").write_text('{"benchmark/synthetic_vqa/accuracy": 0.625}')
    assert launch.objective(cfg, Path(tmp_path)) == 0.625
    cfg.objective = "benchmark/nope"
    with pytest.raises(KeyError, match="benchmark/nope"):
        launch.objective(cfg, Path(tmp_path))
