"""Every task YAML in conf/benchmark composes, resolves, and names a constructor that accepts its
keys (the synthetic ones are built for real in test_runner.py)."""

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object

CONF = Path(__file__).resolve().parents[2] / "conf"
NAMES = sorted(p.stem for p in (CONF / "benchmark").glob("*.yaml"))


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_config_composes(name):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[f"benchmark={name}", "task=benchmark"])
    assert len(cfg.benchmark) >= 1
    for task_name, task in cfg.benchmark.items():
        target = get_object(task._target_)
        accepted = set(inspect.signature(target).parameters)
        keys = {k for k in task if not k.startswith("_")}
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values()):
            assert keys <= accepted, f"{name}/{task_name}: unknown keys {keys - accepted}"
        for key in keys:
            task[key]  # every interpolation resolves
        if "reader" in task:
            reader = get_object(task.reader._target_)
            reader_keys = {k for k in task.reader if not k.startswith("_")}
            assert reader_keys <= set(inspect.signature(reader).parameters), (
                f"{name}/{task_name}: reader keys"
            )


def test_group_files_select_their_tasks():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        assert list(compose(config_name="config", overrides=["benchmark=official"]).benchmark) == [
            "vqav2",
            "coco_caption",
        ]
        both = compose(config_name="config", overrides=["benchmark=[vqav2,gqa]"]).benchmark
        assert list(both) == ["vqav2", "gqa"]
