"""Helpers of the toolkit tests: compose the real conf/ the way run.py does, run run.py in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from launch_env import child_environ
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def compose_config(overrides: list[str], run_dir: Path | str = "/tmp/libra-test-run") -> DictConfig:
    """The config run.py would get for these overrides, with the Hydra node set so that
    ``${hydra:...}`` interpolations resolve; ``run_dir`` stands in for Hydra's output dir."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_py(
    args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` from ``cwd`` (outputs land there), W&B offline, output captured."""
    full_env = child_environ(WANDB_MODE="offline", HYDRA_FULL_ERROR="1", PYTHONPATH=str(ROOT))
    full_env.pop("WANDB_API_KEY", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shaped_checkpoint(tmp_path: Path, data_dir: Path, **config) -> Path:
    """A folder with the tiny vision tokenizer fixture and a config.json holding only the shape fields
    validation compares (values that agree with the tokenizer unless ``config`` changes them)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(data_dir / "vision_tokenizer_tiny" / "model", folder)
    values = {
        "max_vision_token_length": 18,
        "vision_vocab_size": 18,
        "vision_codebook_num": 2,
        "contiguous_signal_size": 4 * 32,  # 4 selected layers of a 32-wide CLIP
    }
    values.update(config)
    (folder / "config.json").write_text(json.dumps(values))
    return folder


@pytest.fixture
def hydra_cleared():
    yield
    HydraConfig.instance().cfg = None
