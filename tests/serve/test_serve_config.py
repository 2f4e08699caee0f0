"""`task=serve`'s config block is validated before anything loads: the key and the fix are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from libra.validation import ConfigError, validate

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/tmp/libra-test-serve"
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    HydraConfig.instance().cfg = None


def test_serve_defaults_validate_and_bad_values_are_named(tiny_export):
    cfg = _compose(["task=serve", f"checkpoint={tiny_export}"])
    validate(cfg)
    assert cfg.serve.host == "127.0.0.1" and cfg.serve.api_key is None  # loopback, no key by default

    with pytest.raises(ConfigError, match="checkpoint: task=serve needs a checkpoint"):
        validate(_compose(["task=serve"]))
    bad = ["task=serve", f"checkpoint={tiny_export}", "serve.port=0", "serve.max_images=0"]
    with pytest.raises(ConfigError) as info:
        validate(_compose(bad))
    assert "serve.port: 0 must be in [1, 65535]" in str(info.value)
    assert "serve.max_images: 0 must be > 0" in str(info.value)
    with pytest.raises(Exception, match="serve.port=http"):  # a wrong type fails at composition
        _compose(["task=serve", "serve.port=http"])
