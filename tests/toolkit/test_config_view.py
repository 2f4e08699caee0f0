"""What run.py prints first: the config differences with their sources, and `--help`."""

from __future__ import annotations

from libra.config_view import config_differences, render_differences

from .conftest import run_py


def test_differences_name_their_source():
    defaults = {"task": "train", "trainer": {"max_steps": 400, "lr": 1.0}, "model": {"hidden": 128}}
    cfg = {"task": "chat", "trainer": {"max_steps": 3, "lr": 2.0}, "model": {"hidden": 4096, "layers": 32}}
    choices = {"experiment": "pretrain", "model": "libra_7b", "trainer": "default", "hydra/launcher": "basic"}
    default_choices = {"experiment": "tiny", "model": "tiny", "trainer": "default", "hydra/launcher": "basic"}
    found = config_differences(
        cfg, defaults, ["task=chat", "trainer.max_steps=3", "model=libra_7b"], choices, default_choices
    )
    assert sorted(found) == [
        ("model.hidden", 4096, "model=libra_7b"),
        ("model.layers", 32, "model=libra_7b"),
        ("task", "chat", "command line"),
        ("trainer.lr", 2.0, "experiment=pretrain"),
        ("trainer.max_steps", 3, "command line"),
    ]
    text = render_differences(found, choices)
    assert "model: ..." in text and "# model=libra_7b" in text  # a swapped group is one line
    assert "hidden" not in text
    lines = text.splitlines()
    assert lines[lines.index("  trainer:") + 1].split("#")[0].strip() == "lr: 2.0"


def test_help_lists_tasks_groups_and_examples(tmp_path):
    result = run_py(["--help"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0
    for text in ("Tasks (task=...)", "serve", "experiment: benchmark_official, instruct, pretrain, tiny"):
        assert text in result.stdout
    assert "python run.py -m sweep=lr_optuna" in result.stdout
    # the groups a user picks from, not the schemas their files extend (libra/config_schema.py)
    assert "schema" not in result.stdout and "trainer: default" in result.stdout
