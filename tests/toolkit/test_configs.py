"""Every file in conf/, experiments/ and sweeps/ composes, resolves and validates (lightning-hydra-template
style); sweep parameters name keys that exist."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from libra.validation import ConfigError, validate

from .conftest import CONF, ROOT, compose_config, shaped_checkpoint

GROUPS = sorted(
    p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "sweep", "hydra")
)
GROUP_OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


# Options that only go together with another choice (the defaults are the tiny run): 8 GPUs per SLURM
# node need a global batch divisible by 8 x micro batch; the tiny tokenizer is trained on the synthetic
# set (and so are the synthetic benchmarks), so real data comes with a real tokenizer and benchmark;
# model and tokenizer folders are shared keys.
REAL_DATA = ["tokenizer=libra", "benchmark=official"]
EXTRA_OVERRIDES = {
    ("cluster", "slurm"): ["trainer.micro_batch_size=2", "trainer.global_batch_size=16"],
    ("cluster", "torchrun"): ["trainer.micro_batch_size=2", "trainer.global_batch_size=4"],
    ("data", "laion"): REAL_DATA,
    ("data", "coco_caption"): REAL_DATA,
    ("data", "llava_instruct"): REAL_DATA,
    ("data", "mixture_laion_coco"): REAL_DATA,
    ("data", "mixture_coco_llava"): REAL_DATA,
    ("model", "libra_7b"): ["tokenizer=libra"],
    ("tokenizer", "from_pretrained"): ["model=from_pretrained"],
}


def _validate_and_resolve(cfg) -> None:
    """Validate, then resolve every interpolation. Values a user must give (``???``, e.g.
    data.shards) are filled with a placeholder first: the check is that nothing *else* is wrong."""
    try:
        validate(cfg)
    except ConfigError as error:
        required = [p.key for p in error.problems if p.message == "is required (???)"]
        if len(required) != len(error.problems):
            raise
        for key in required:
            OmegaConf.update(cfg, key, "/placeholder/value")
        validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)


def test_the_folders_are_config_groups():
    assert (CONF / "experiment").resolve() == (ROOT / "experiments").resolve()
    assert (CONF / "sweep").resolve() == (ROOT / "sweeps").resolve()
    assert EXPERIMENTS and SWEEPS and len(GROUP_OPTIONS) > len(GROUPS)


def test_default_config_is_the_tiny_experiment(hydra_cleared):
    cfg = compose_config([])
    assert cfg.hydra.runtime.choices.experiment == "tiny"
    assert (cfg.task, cfg.name, cfg.group, cfg.cluster.launcher) == ("train", "tiny", "tiny", "local")
    validate(cfg)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_validates(group, option, hydra_cleared):
    cfg = compose_config([f"{group}={option}", *EXTRA_OVERRIDES.get((group, option), [])])
    assert cfg.hydra.runtime.choices[group] == option
    _validate_and_resolve(cfg)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name, tmp_path, data_dir, hydra_cleared):
    cfg = compose_config([f"experiment={name}"])
    assert cfg.name == name
    if cfg.task != "train":  # inference experiments take the checkpoint folder on the command line
        cfg.checkpoint = str(shaped_checkpoint(tmp_path, data_dir))
    _validate_and_resolve(cfg)


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_composes_and_names_existing_keys(name, hydra_cleared):
    cfg = compose_config([f"sweep={name}"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.group == name  # W&B group <name>-sweep-<sweep dir name>, one per sweep
    validate(cfg)
    params = cfg.hydra.sweeper.params
    assert params, f"sweeps/{name}.yaml sweeps nothing"
    for key in params:
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, (
            f"sweeps/{name}.yaml: no key {key}"
        )
    if cfg.objective is not None:
        assert cfg.objective.startswith("benchmark/"), "the objective is read from metrics.json"


def test_experiments_hold_only_a_diff():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        assert path.read_text().startswith("# @package _global_"), (
            f"{path.name}: first line must be the package header"
        )


def test_a_typo_in_an_override_fails_at_composition(hydra_cleared):
    with pytest.raises(Exception, match="trainer.max_stepz"):
        compose_config(["trainer.max_stepz=3"])


def test_paths_in_conf_point_at_real_classes():
    """Every ``_target_`` in conf/, experiments/ and sweeps/ imports (a renamed class breaks here)."""
    from hydra.utils import get_object

    targets = set()
    for path in sorted(CONF.rglob("*.yaml")):
        stack = [OmegaConf.to_container(OmegaConf.load(path), resolve=False)]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("_target_"), str):
                    targets.add(node["_target_"])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    assert "libra.tracking.WandbLogger" in targets
    for target in sorted(targets):
        get_object(target)


def test_the_readme_commands_compose(tmp_path, data_dir, hydra_cleared):
    """The override shapes the README and the issue use: a benchmark list, a prompt with spaces."""
    checkpoint = str(shaped_checkpoint(tmp_path, data_dir))
    cfg = compose_config(["task=benchmark", f"checkpoint={checkpoint}", "benchmark=[vqav2,coco_caption]"])
    assert list(cfg.benchmark) == ["vqav2", "coco_caption"]
    validate(cfg)
    cfg = compose_config(["task=chat", f"checkpoint={checkpoint}", "prompt=What is unusual here?"])
    assert cfg.prompt == "What is unusual here?"
    validate(cfg)
    cfg = compose_config(["experiment=tiny", "optimizer.lr=3e-4", "model.bridge_rank=4"])
    assert (cfg.optimizer.lr, cfg.model.bridge_rank) == (3e-4, 4)
