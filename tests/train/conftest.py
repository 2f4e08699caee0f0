"""A complete, tiny training config built from the repository's own conf/ files (no Hydra run dir)."""

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from libra.config_schema import load_option

CONF = Path(__file__).resolve().parents[2] / "conf"

# Small enough that generation, tokenizer training and a few steps take seconds.
SYNTHETIC = {
    "seed": 0,
    "image_size": 56,
    "train_images": 48,
    "val_images": 8,
    "test_images": 8,
    "questions_per_image": 2,
    "images_per_shard": 48,
}


def tiny_train_config(run_dir: Path, cache_dir: Path, deepspeed: str = "stage0", **trainer) -> DictConfig:
    def load(group: str, name: str) -> DictConfig:
        return load_option(CONF / group / f"{name}.yaml")

    data = {
        "train": {
            "_target_": "libra.data.synthetic_readers.synthetic_instructions",
            "cache_dir": "${cache_dir}",
            "generator": "${synthetic}",
            "split": "train",
        },
        "val": {
            "_target_": "libra.data.synthetic_readers.synthetic_instructions",
            "cache_dir": "${cache_dir}",
            "generator": "${synthetic}",
            "split": "val",
        },
    }
    model = load("model", "tiny")
    model.merge_with(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    )
    steps = {
        "max_steps": 4,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "precision": "fp32",
        "num_workers": 0,
        "log_every": 1,
        "eval_every": 0,
        "eval_batches": 2,
        "checkpoint_every": 0,
        "benchmark_at_end": False,
        "benchmark_every": 0,
        "peak_flops_per_device": 1.0e11,
    }
    cfg = OmegaConf.create(
        {
            "task": "train",
            "seed": 0,
            "run_dir": str(run_dir),
            "cache_dir": str(cache_dir),
            "synthetic": SYNTHETIC,
            "resume": None,
            "checkpoint": None,
            "model": model,
            "tokenizer": load("tokenizer", "tiny"),
            "data": data,
            "optimizer": load("optimizer", "adamw"),
            "scheduler": load("scheduler", "cosine"),
            "deepspeed": load("deepspeed", deepspeed),
            "trainer": OmegaConf.merge(load("trainer", "default"), steps, trainer),
            "finetune": load("finetune", "full"),
            "logger": {"backend": None},
            "benchmark": None,
        }
    )
    cfg.optimizer.lr = 1e-3
    return cfg


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Synthetic data + tiny processor, built once per test session."""
    return tmp_path_factory.mktemp("tiny_cache")


def compose_experiment(experiment: str, run_dir: Path, overrides: list[str]) -> DictConfig:
    """The config `python run.py experiment=<experiment> <overrides>` would get, run dir fixed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
