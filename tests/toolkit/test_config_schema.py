"""Typed composition (libra/config_schema.py): an unknown key or a wrong type fails while Hydra composes,
naming the key (and the file); every range rule of libra/validation.py rejects its bad value before any
work."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from libra import config_schema
from libra.validation import (
    BELOW_ONE,
    NON_NEGATIVE,
    PORT,
    POSITIVE,
    PROBABILITY,
    RANGES,
    SEEDS,
    TYPES,
    ConfigError,
    validate,
)

from .conftest import CONF, ROOT, compose_config, run_py

# A choice of each schema group's options that has the key, for overrides of option-specific keys.
SLURM = ["cluster=slurm"]
TORCHRUN = ["cluster=torchrun"]
LAION = ["data=laion", "tokenizer=libra", "benchmark=official"]
CONTEXT = {
    "cluster.master_port": TORCHRUN,
    "cluster.node_rank": TORCHRUN,
    "cluster.timeout_min": SLURM,
    "cluster.cpus_per_task": SLURM,
    "data.train.t2i_prob": LAION,
    "data.train.t2i_hide_features_prob": LAION,
    "finetune.rank": ["finetune=lora"],
    "finetune.alpha": ["finetune=lora"],
    "finetune.dropout": ["finetune=lora"],
}
BAD_VALUE = {
    POSITIVE: "0",
    NON_NEGATIVE: "-1",
    PROBABILITY: "1.5",
    BELOW_ONE: "1.0",
    PORT: "65536",
    SEEDS: "18446744073709551616",
}
BAD_VALUE_OF_KEY = {"optimizer.betas": "[0.9,1.0]"}  # a list: each value is checked


def _composition_error(overrides: list[str], config_dir=CONF) -> str:
    """The text of the composition failure: Hydra's message and the OmegaConf error it wraps."""
    with (
        pytest.raises(ConfigCompositionException) as info,
        initialize_config_dir(config_dir=str(config_dir), version_base="1.3"),
    ):
        compose(config_name="config", overrides=overrides)
    return f"{info.value}\n{info.value.__cause__}"


def _conf_copy(tmp_path):
    """A writable copy of conf/ (experiments/ and sweeps/ copied in place of their links)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    return conf


# Each typed group with one of its options (the option's yaml extends /schema_<group>_<option>).
TYPED_OPTIONS = [
    ("trainer", "default", "TrainerConfig"),
    ("optimizer", "adamw", "AdamWConfig"),
    ("scheduler", "cosine", "CosineScheduleConfig"),
    ("scheduler", "constant", "ConstantScheduleConfig"),
    ("cluster", "local", "LocalClusterConfig"),
    ("cluster", "torchrun", "TorchrunClusterConfig"),
    ("cluster", "slurm", "SlurmClusterConfig"),
    ("logger", "wandb", "WandbLoggerConfig"),
    ("logger", "none", "NoLoggerConfig"),
    ("finetune", "full", "FullFinetuneConfig"),
    ("finetune", "lora", "LoraFinetuneConfig"),
    ("deepspeed", "zero3_offload", "DeepSpeedConfig"),
]


def _extends_a_schema(group: str, path) -> bool:
    """The option's yaml names its schema in its defaults, or extends a sibling option that does
    (conf/scheduler/tiny.yaml is cosine with other values)."""
    defaults = yaml.safe_load(path.read_text()).get("defaults", [])
    for entry in defaults:
        if isinstance(entry, str) and entry.startswith(f"/schema_{group}_"):
            return True
        sibling = CONF / group / f"{entry}.yaml" if isinstance(entry, str) else None
        if sibling and sibling != path and sibling.is_file() and _extends_a_schema(group, sibling):
            return True
    return False


def test_every_schema_group_option_has_a_yaml_file_that_extends_it():
    for group, options in config_schema.GROUP_SCHEMAS.items():
        for path in sorted((CONF / group).glob("*.yaml")):
            assert _extends_a_schema(group, path), f"conf/{group}/{path.name} does not extend its schema"
        for option in options:
            if group != "deepspeed":  # one schema for every deepspeed/*.yaml
                assert (CONF / group / f"{option}.yaml").is_file(), (
                    f"{config_schema.schema_name(group, option)} has no yaml"
                )
    assert "libra_root_schema" in (CONF / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("group", "option", "schema"), TYPED_OPTIONS, ids=[f"{g}={o}" for g, o, _ in TYPED_OPTIONS]
)
def test_an_unknown_key_in_an_experiment_file_fails_naming_file_and_key(group, option, schema, tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "experiment" / "typo.yaml").write_text(
        f"# @package _global_\ndefaults:\n  - override /{group}: {option}\n\n{group}:\n  bogus_key: 1\n"
    )
    text = _composition_error(["experiment=typo"], conf)
    assert "In 'experiment/typo'" in text
    assert f"Key 'bogus_key' not in '{schema}'" in text and f"full_key: {group}.bogus_key" in text


def test_an_unknown_root_key_in_an_experiment_file_fails(tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ntrainr:\n  max_steps: 3\n")
    text = _composition_error(["experiment=typo"], conf)
    assert "In 'experiment/typo'" in text and "Key 'trainr' not in 'RootConfig'" in text


@pytest.mark.parametrize(
    ("file", "anchor"),
    [
        ("trainer/default.yaml", "max_steps: 1000"),
        ("cluster/slurm.yaml", "  nodes: 1"),
        ("config.yaml", "seed: 42"),
    ],
)
def test_a_typo_in_a_group_file_fails_naming_file_and_key(file, anchor, tmp_path):
    conf = _conf_copy(tmp_path)
    path = conf / file
    text = path.read_text()
    assert anchor in text
    path.write_text(text.replace(anchor, anchor.replace(anchor.split(":")[0].strip(), "max_stepz"), 1))
    overrides = ["cluster=slurm"] if "slurm" in file else []
    error = _composition_error(overrides, conf)
    assert "max_stepz" in error
    assert f"In '{file.removesuffix('.yaml')}'" in error


@pytest.mark.parametrize("group", sorted(config_schema.GROUP_SCHEMAS))
def test_an_unknown_key_override_fails_naming_it(group):
    assert f"{group}.bogus_key" in _composition_error([f"{group}.bogus_key=1"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.max_steps=abc"],
        ["trainer.compile=maybe"],
        ["optimizer.lr=abc"],
        ["optimizer.betas=[0.9,fast]"],
        ["scheduler.warmup_steps=ten"],
        ["cluster.nodes=abc"],
        ["cluster=torchrun", "cluster.master_port=http"],
        ["cluster=slurm", "cluster.timeout_min=1h"],
        ["logger.log_artifacts=maybe"],
        ["logger.backend.upload_max_mb=lots"],
        ["finetune=lora", "finetune.rank=abc"],
        ["deepspeed.stage=two"],
        ["seed=abc"],
        ["max_new_tokens=many"],
        ["serve.port=http"],
        ["synthetic.image_size=big"],
    ],
    ids=lambda o: o[-1],
)
def test_a_wrong_type_fails_at_composition_naming_the_key(overrides):
    key = overrides[-1].split("=")[0]
    text = _composition_error(overrides)
    assert f"Error merging override {overrides[-1]}" in text and f"full_key: {key}" in text


def test_a_wrong_type_in_an_experiment_file_names_file_and_key(tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: a lot\n")
    text = _composition_error(["experiment=typo"], conf)
    assert "In 'experiment/typo'" in text and "full_key: trainer.max_steps" in text


def test_interpolations_and_nulls_still_compose(hydra_cleared):
    cfg = compose_config(["checkpoint=null", "optimizer.lr=${trainer.grad_clip}"])
    assert (cfg.name, cfg.optimizer.lr, cfg.checkpoint) == ("tiny", 1.0, None)
    assert cfg.run_dir == "/tmp/libra-test-run"  # ${hydra:runtime.output_dir} in a typed str field


def test_composing_needs_no_import_of_libra_first():
    """hydra_plugins/libra_config_schema registers the schemas when Hydra starts."""
    code = (
        "import sys\nfrom hydra import compose, initialize_config_dir\n"
        f"with initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'):\n"
        "    cfg = compose(config_name='config')\n"
        "from omegaconf import OmegaConf\nprint(OmegaConf.get_type(cfg.trainer).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "TrainerConfig" in result.stdout


def test_every_ranged_key_exists_in_a_composed_config(hydra_cleared):
    for key in RANGES:
        if not key.startswith("data."):
            assert key in TYPES, f"{key}: no schema field of that name"
    cfg = compose_config(LAION)
    assert all(
        key.removeprefix("data.train.") in cfg.data.train for key in CONTEXT if key.startswith("data.")
    )


@pytest.mark.parametrize("key", sorted(RANGES))
def test_each_range_rule_rejects_its_bad_value_before_any_work(key, hydra_cleared):
    bad = BAD_VALUE_OF_KEY.get(key, BAD_VALUE[RANGES[key]])
    cfg = compose_config([*CONTEXT.get(key, []), f"{key}={bad}"])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert f"  {key}: " in str(error.value) and f"must be {RANGES[key].describe()}" in str(error.value)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["trainer.log_every=0"], "trainer.log_every: 0 must be > 0"),
        (["optimizer.lr=abc"], "optimizer.lr"),
        (["~optimizer"], "optimizer: is removed, but task=train needs it"),
    ],
)
def test_run_py_stops_before_any_work(args, key, tmp_path):
    result = run_py([*args, "logger=none"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert key in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("metrics.jsonl"))


@pytest.mark.parametrize(
    ("overrides", "message", "fix"),
    [
        (
            ["+trainer.max_stepz=10"],
            "trainer.max_stepz: is not a key of TrainerConfig: nothing reads it",
            "fix: trainer.max_steps=<value>  (instead of +trainer.max_stepz)",
        ),
        (
            ["cluster=torchrun", "+cluster.partition=gpu"],
            "cluster.partition: is not a key of TorchrunClusterConfig",
            "fix: cluster.partition is read only with cluster=slurm: choose it, or drop +cluster.partition",
        ),
        (["+trainr.max_steps=10"], "trainr: is not a key of RootConfig", "fix: trainer=<value>"),
    ],
    ids=lambda v: v[-1] if isinstance(v, list) else None,
)
def test_a_key_added_with_plus_to_a_typed_group_is_refused(overrides, message, fix, hydra_cleared):
    """`+key=` (what Hydra suggests for an unknown key) opens the typed node: validation names the key
    its schema lacks instead of running without it."""
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert message in str(error.value) and fix in str(error.value)
    validate(compose_config(["+tokenizer.text_folder=/x"]))  # model, tokenizer, data, benchmark: free-form


@pytest.mark.parametrize("group", ["optimizer", "data", "scheduler", "finetune", "cluster", "logger"])
def test_removing_a_group_the_task_needs_is_refused(group, hydra_cleared):
    """`~optimizer` leaves the experiment's optimizer values without the group's `_target_`: the run
    would fail once under way. One problem names the group and its options, none for its keys."""
    with pytest.raises(ConfigError) as error:
        validate(compose_config([f"~{group}"]))
    assert error.value.problems[0] == error.value.problems[-1]  # one problem only
    problem = error.value.problems[0]
    assert (problem.key, problem.message) == (group, "is removed, but task=train needs it")
    assert problem.fix.startswith(f"drop ~{group}, or choose one: {group}=")


def test_removing_a_group_the_task_does_not_read_is_allowed(hydra_cleared):
    validate(compose_config(["~benchmark"]))  # training without a benchmark: the recipe skips it
    with pytest.raises(ConfigError, match="benchmark: is removed, but task=benchmark needs it"):
        validate(compose_config(["task=benchmark", "~benchmark"]))
