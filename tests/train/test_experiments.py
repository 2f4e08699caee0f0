"""Every training experiment runs one optimizer step on the tiny model and the synthetic data.

Everything but the model, tokenizer, data and loop length is the experiment's own: its DeepSpeed
stage, optimizer, scheduler, freezing and precision all go through the one engine path.
"""

from pathlib import Path

import pytest
from conftest import SYNTHETIC, compose_experiment
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from libra.tracking import read_metrics
from libra.train.recipe import train

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))


def one_step_overrides(run_dir: Path, cache: Path) -> list[str]:
    synthetic = ",".join(f"{k}:{v}" for k, v in SYNTHETIC.items())
    return [
        "model=tiny",
        "tokenizer=tiny",
        "data=synthetic",
        "cluster=local",
        "logger=none",
        f"run_dir={run_dir}",
        f"cache_dir={cache}",
        f"synthetic={{{synthetic}}}",
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_hidden_layers=2",
        "model.num_attention_heads=2",
        "trainer.max_steps=1",
        "trainer.global_batch_size=2",
        "trainer.micro_batch_size=2",
        "trainer.num_workers=0",
        "trainer.eval_every=0",
        "trainer.eval_batches=1",
        "trainer.checkpoint_every=0",
        "trainer.gradient_checkpointing=false",
        "trainer.benchmark_at_end=false",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_one_step(experiment, tmp_path, tiny_cache):
    run_dir = tmp_path / "run"
    try:
        cfg = compose_experiment(experiment, run_dir, one_step_overrides(run_dir, tiny_cache))
        if cfg.task != "train":
            pytest.skip(f"experiment {experiment} is task={cfg.task}; the benchmark tests cover it")
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        del cfg["hydra"]
    finally:
        HydraConfig.instance().cfg = None
    train(cfg)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in records] == [1]
    assert records[0]["train/loss"] > 0
    assert (run_dir / "export" / "config.json").is_file()
