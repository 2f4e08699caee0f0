"""Validation of the composed config before any work: choices, ranges and cross-field rules.

``validate(cfg)`` raises ``ConfigError`` listing every problem at once; each names the key, what is
wrong and the override that fixes it, e.g.

    trainer.global_batch_size: 10 is not a multiple of trainer.micro_batch_size (4) x world size (1) = 4
      fix: trainer.global_batch_size=12  (or another multiple of 4)

run.py calls it before dispatching, and the SLURM launcher calls it on the submitting machine for
every job of a sweep, so a bad config never waits in a queue. The types and keys are the schemas of
libra/config_schema.py, which Hydra checks during composition; every range and cross-field rule is
written once here, and libra/train/deepspeed_config.py raises the same problems through
``value_problems``, ``batch_problems`` and ``offload_problems``. Imports no torch.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from libra import config_schema  # also registers the schemas that conf/ extends

# The names of the task table's entries (libra/tasks.py; tests/test_layering.py checks they are the
# same). Not imported from there: the table imports every task, DeepSpeed and torch included, and
# checking a config needs none of them.
TASKS = ("train", "benchmark", "chat", "generate", "serve", "demo")
LAUNCHERS = ("local", "torchrun", "slurm")
PRECISIONS = ("fp32", "bf16")
# Groups a task reads: a value still marked ??? (required) in another group does not stop it.
GROUPS_OF_TASK = {
    "train": ("model", "tokenizer", "data", "optimizer", "scheduler", "deepspeed", "trainer", "benchmark"),
    "benchmark": ("benchmark",),
    "chat": (),
    "generate": (),
    "serve": (),
    "demo": (),
}
# Groups a task cannot run without, beyond the ??? check above: removing one (`~optimizer`) is refused
# before any work. Training without `benchmark` is allowed (the recipe then skips the benchmark).
NEEDED_GROUPS = {
    "train": ("model", "tokenizer", "data", "optimizer", "scheduler", "deepspeed", "trainer", "finetune"),
    "benchmark": ("benchmark",),
}
EVERY_TASK_NEEDS = ("cluster", "logger")


class ConfigError(ValueError):
    """The config cannot run; the message lists every problem with its fix."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = [f"invalid config ({len(self.problems)} problem(s)):"]
        for p in self.problems:
            lines.append(f"  {p.key}: {p.message}")
            lines.append(f"    fix: {p.fix}")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    fix: str


# --- the checks of single values: types from the schema, choices and ranges written here ---------
#
# Composition already rejects unknown keys and wrong types (libra/config_schema.py). The same types are
# checked again here, read from those dataclasses, for configs that did not come through Hydra (built by
# hand, or a saved config.yaml read back); the choices and ranges below are checked only here.


@dataclass(frozen=True)
class FieldType:
    """The Python type(s) a key's value may have, derived from its schema annotation."""

    types: tuple[type, ...]
    optional: bool = False  # null allowed


@dataclass(frozen=True)
class Range:
    """An allowed interval: ``low`` (inclusive unless ``low_open``) up to ``high`` (inclusive unless
    ``high_open``; None = unbounded). A list value is checked element by element."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        low = _bound(self.low)
        if self.high is None:
            return f"> {low}" if self.low_open else f">= {low}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{low}, {_bound(self.high)}{right}"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        if self.high is None:
            return above
        return above and (value < self.high if self.high_open else value <= self.high)

    def fix(self, key: str) -> str:
        if self == POSITIVE:
            return f"{key}=<positive value>"
        if self == NON_NEGATIVE:
            return f"{key}=0  (or a positive value)"
        return f"{key}=<value {self.describe()}>"


def _bound(value: float) -> str:
    """An interval's end as written: an integer whole (2**63 is not 9.22337e+18), a float short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)  # 0 allowed, e.g. an interval of 0 = never
PROBABILITY = Range(0, 1)
# [0, 1): an Adam moment decay (1 would never forget), a dropout rate (1 would drop everything)
BELOW_ONE = Range(0, 1, high_open=True)
PORT = Range(1, 65535)
# torch.Generator.manual_seed's range: a seed outside it fails once the model is loaded
SEEDS = Range(-(2**63), 2**64 - 1)

# The modules finetune=lora can adapt, by their names in the model (libra/model/modeling.py); written
# here so that finetune.target_modules is checked before launch, and read by libra/train/lora.py.
LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_EXPERT = (
    "vision_q_proj",
    "vision_k_proj",
    "vision_v_proj",
    "vision_o_proj",
    "vision_gate_proj",
    "vision_up_proj",
    "vision_down_proj",
)
BRIDGES = (
    "vision_k_bridge_on_language",
    "vision_k_bridge_on_vision",
    "vision_v_bridge_on_language",
    "vision_v_bridge_on_vision",
)

# The allowed values of keys with a fixed set of them (of each element, for a list).
CHOICES: dict[str, tuple[Any, ...]] = {
    "task": TASKS,
    "print_config": ("diff", "full", "none"),
    "cluster.launcher": LAUNCHERS,
    "trainer.precision": PRECISIONS,
    "deepspeed.stage": (0, 1, 2, 3),
    "logger.backend.mode": ("auto", "online", "offline", "disabled"),
    "logger.backend.console": ("wrap", "redirect", "off"),
    "finetune.base_dtype": ("float32", "bfloat16"),
    "finetune.target_modules": LANGUAGE_LINEARS + VISION_EXPERT + BRIDGES,
}

# How many values a list key takes: (at least, at most; None = no limit). AdamW reads two betas (a
# third would be dropped silently, one fails deep in torch); LoRA with no target trains nothing.
LENGTHS: dict[str, tuple[int, int | None]] = {
    "optimizer.betas": (2, 2),
    "finetune.target_modules": (1, None),
}

# The range of every numeric key that has one; a key absent from the config is not checked.
RANGES: dict[str, Range] = {
    **dict.fromkeys(
        (
            "max_new_tokens",
            "cluster.nodes",
            "cluster.gpus_per_node",
            "cluster.timeout_min",
            "cluster.cpus_per_task",
            "trainer.max_steps",
            "trainer.global_batch_size",
            "trainer.micro_batch_size",
            "trainer.grad_clip",
            "trainer.log_every",
            "trainer.eval_batches",
            "trainer.max_bad_steps",
            "trainer.benchmark_items",
            "trainer.peak_flops_per_device",
            "optimizer.lr",
            "optimizer.eps",
            "optimizer.llm_lr_scale",
            "serve.max_images",
            "serve.max_request_mb",
            "serve.max_batch_size",
            "logger.backend.upload_max_mb",
            "finetune.rank",
            "finetune.alpha",
            # the synthetic set's generator: an empty split or a 0-pixel image fails while generating
            "synthetic.image_size",
            "synthetic.train_images",
            "synthetic.val_images",
            "synthetic.test_images",
            "synthetic.questions_per_image",
            "synthetic.images_per_shard",
        ),
        POSITIVE,
    ),
    # a TCP port; a larger number fails only when the server or the rendezvous binds it
    **dict.fromkeys(("serve.port", "cluster.master_port"), PORT),
    "seed": SEEDS,
    **dict.fromkeys(
        (
            "temperature",
            "trainer.eval_every",
            "trainer.checkpoint_every",
            "trainer.keep_last",
            "trainer.num_workers",
            "trainer.benchmark_every",
            "optimizer.weight_decay",
            "scheduler.warmup_steps",
            "serve.batch_window_ms",
            "cluster.node_rank",
        ),
        NON_NEGATIVE,
    ),
    **dict.fromkeys(
        (
            "scheduler.warmup_ratio",
            "scheduler.min_lr_ratio",
            "data.train.t2i_prob",
            "data.train.t2i_hide_features_prob",
        ),
        PROBABILITY,
    ),
    "optimizer.betas": BELOW_ONE,
    "finetune.dropout": BELOW_ONE,
}

# Keys every config must have (a hand-built one may leave others out); more for some tasks.
REQUIRED = (
    "task",
    "seed",
    "checkpoint",
    "resume",
    "objective",
    "prompt",
    "image",
    "max_new_tokens",
    "temperature",
    "cluster.launcher",
    "cluster.nodes",
    "cluster.gpus_per_node",
    "trainer.global_batch_size",
    "trainer.micro_batch_size",
    "trainer.precision",
    "trainer.grad_clip",
    "deepspeed.stage",
)
_SERVE_KEYS = tuple(f"serve.{f.name}" for f in fields(config_schema.ServeConfig))
TASK_REQUIRED: dict[str, tuple[str, ...]] = {"serve": _SERVE_KEYS, "demo": _SERVE_KEYS}

_PYTHON_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
}


def _schema_types(schema: type, prefix: str) -> dict[str, FieldType]:
    """Dotted key -> FieldType of every typed leaf of a schema dataclass (``Any`` and ``_target_``-style
    keys are left to the classes that read them)."""
    hints = typing.get_type_hints(schema)
    found: dict[str, FieldType] = {}
    for f in fields(schema):
        if f.name.startswith("_"):
            continue
        hint, key = hints[f.name], f"{prefix}{f.name}"
        args = typing.get_args(hint)
        optional = type(None) in args
        if optional:
            (hint,) = [a for a in args if a is not type(None)]
        if is_dataclass(hint):
            found.update(_schema_types(hint, f"{key}."))
            continue
        types = _PYTHON_TYPES.get(typing.get_origin(hint) or hint)
        if types is not None:
            found[key] = FieldType(types, optional)
    return found


def _all_schema_types() -> dict[str, FieldType]:
    """The root keys and every group's keys; a group's options share a key only with the same type."""
    found = _schema_types(config_schema.RootConfig, "")
    for group, options in config_schema.GROUP_SCHEMAS.items():
        for schema in options.values():
            for key, field_type in _schema_types(schema, f"{group}.").items():
                assert found.setdefault(key, field_type) == field_type, f"{key}: two types in the schemas"
    return found


TYPES: dict[str, FieldType] = _all_schema_types()

_ABSENT = object()
_MISSING = object()


def _get(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key; ``_ABSENT`` when the key does not exist, ``_MISSING`` for ``???``."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _ABSENT
        if OmegaConf.is_missing(node, part):
            return _MISSING
        node = node[part]
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _show(value: Any) -> str:
    """A number as a user would type it: 0.0 -> 0, 1e-05 stays."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_problems(key: str, value: Any) -> list[Problem]:
    """The type, choice and range rules of one key, for a present value (the pre-launch check and the
    DeepSpeed config builder both ask here, so a bad value reads the same from either)."""
    field_type = TYPES.get(key)
    if value is None:
        if field_type is not None and not field_type.optional or key in CHOICES:
            return [Problem(key, "is null", f"{key}=<value>")]
        return []
    if field_type is not None:
        # bool is an int in Python; an int field given true/false is a mistake, not a 1.
        wrong_type = not isinstance(value, field_type.types) or (
            isinstance(value, bool) and bool not in field_type.types
        )
        if wrong_type:
            names = " or ".join(t.__name__ for t in field_type.types)
            return [
                Problem(key, f"{value!r} is a {type(value).__name__}, expected {names}", f"{key}=<{names}>")
            ]
    length = LENGTHS.get(key)
    if length is not None and isinstance(value, list):
        low, high = length
        if len(value) < low or (high is not None and len(value) > high):
            need = (
                f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            )
            return [
                Problem(key, f"{value!r} has {len(value)} value(s), needs {need}", f"{key}=[...]  ({need})")
            ]
    choices = CHOICES.get(key)
    if choices is not None and isinstance(value, list):
        unknown = [v for v in value if v not in choices]
        if unknown:
            options = ", ".join(str(c) for c in choices)
            return [Problem(key, f"{unknown} not among {options}", f"{key}=[{choices[0]},...]  (from those)")]
    elif choices is not None and value not in choices:
        options = " | ".join(str(c) for c in choices)
        return [Problem(key, f"{value!r} is not one of {options}", f"{key}={choices[0]}")]
    allowed = RANGES.get(key)
    if allowed is not None:
        values = value if isinstance(value, list) else [value]
        if not all(_is_number(v) for v in values):
            return [Problem(key, f"{value!r} is not a number", f"{key}=<number {allowed.describe()}>")]
        if not all(allowed.contains(v) for v in values):
            each = "each value " if isinstance(value, list) else ""
            shown = f"[{', '.join(map(_show, values))}]" if isinstance(value, list) else _show(value)
            return [Problem(key, f"{shown} {each}must be {allowed.describe()}", allowed.fix(key))]
    return []


def raise_problems(problems: Sequence[Problem]) -> None:
    """Raise ``ConfigError`` for these problems, if there are any."""
    if problems:
        raise ConfigError(problems)


def _check_values(cfg: DictConfig) -> list[Problem]:
    required = REQUIRED + TASK_REQUIRED.get(cfg.get("task"), ())
    keys = dict.fromkeys([*TYPES, *CHOICES, *RANGES, *required])
    problems = []
    for key in keys:
        try:
            value = _get(cfg, key)
        except InterpolationResolutionError as error:
            if "HydraConfig was not set" in str(error):
                continue  # ${hydra:...} outside the job (a launcher's check); composition typed it
            # e.g. ${oc.env:X} with X unset: named here, not as OmegaConf's traceback
            message = f"does not resolve ({error.msg.splitlines()[0]})"
            problems.append(Problem(key, message, _fix_for_missing_key(error)))
            continue
        if value is _ABSENT:
            if key in required:
                problems.append(
                    Problem(key, "is not set", f"add {key}=<value> (or pick a config group that has it)")
                )
            continue
        if value is not _MISSING:
            problems.extend(value_problems(key, value))
    return problems


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[Problem]:
    """Keys of a typed node (one whose schema is a dataclass) that its schema lacks. Composition
    refuses them, except when added with `+key=` (Hydra's own advice for an unknown key), which opens
    the node: such a key would be silently ignored, as `+trainer.max_stepz=10` or `+cluster.partition=`
    with cluster=torchrun would."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in fields(schema)} if schema is not None and is_dataclass(schema) else None
    problems = []
    for key in node:
        name = f"{prefix}{key}"
        if name == "hydra":
            continue  # Hydra's own node (a compose with return_hydra_config), checked by Hydra
        if known is not None and key not in known:
            options = _options_defining(name)
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            if options:
                fix = f"{name} is read only with {' or '.join(options)}: choose it, or drop +{name}"
            elif close:
                fix = f"{prefix}{close[0]}=<value>  (instead of +{name})"
            else:
                fix = f"drop +{name}  ({prefix.rstrip('.') or 'the root'} takes: {', '.join(sorted(known))})"
            problems.append(Problem(name, f"is not a key of {schema.__name__}: nothing reads it", fix))
        elif not OmegaConf.is_missing(node, key) and not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                problems.extend(_unknown_keys(child, f"{name}."))
    return problems


def _missing_keys(node: DictConfig | ListConfig, prefix: str) -> list[str]:
    """Keys whose value is ``???``, found without resolving interpolations (OmegaConf.missing_keys
    resolves them and fails on one that points at a ``???``)."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    found = []
    for key in keys:
        name = f"{prefix}.{key}" if isinstance(node, DictConfig) else f"{prefix}[{key}]"
        if OmegaConf.is_missing(node, key):
            found.append(name)
        elif not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                found.extend(_missing_keys(child, name))
    return found


# run.py's config folder: the group options are read from it to say which one defines a missing key
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _fix_for_missing_key(error: Exception) -> str:
    """The fix of an interpolation to a key the composed config lacks: the options of its group that
    define it (`tokenizer.text_folder` is defined by tokenizer=libra), or setting the key."""
    variable = re.search(r"Environment variable '([^']+)' not found", str(error))
    if variable:
        name = variable[1]
        return f"export {name}=<value>  (or give it a default where it is read: ${{oc.env:{name},<default>}})"
    quoted = str(error).split("'")  # "Interpolation key 'tokenizer.text_folder' not found"
    missing = quoted[1] if len(quoted) > 2 else ""
    options = _options_defining(missing) if missing else []
    if options:
        which = "it" if len(options) == 1 else "one of them"
        return f"{missing} is defined by {' or '.join(options)}: choose {which}, or add +{missing}=<value>"
    return "pick config groups that go together, or set the missing key"


def _options_defining(dotted: str) -> list[str]:
    """`group=option` for each conf/<group>/<option>.yaml whose own keys include the rest of `dotted`."""
    group, _, rest = dotted.partition(".")
    folder = CONF_DIR / group
    if not rest or not folder.is_dir():
        return []
    options = []
    for path in sorted(folder.glob("*.yaml")):
        node: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if "@package _global_" in path.read_text().split("\n", 1)[0]:
            node = node.get(group, {})  # e.g. cluster/slurm.yaml writes its keys under `cluster:`
        for part in rest.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            options.append(f"{group}={path.stem}")
    return options


_ABSENT = object()


def _broken_interpolations(node: DictConfig | ListConfig, prefix: str) -> list[Problem]:
    """Interpolations that point at keys the composed config does not have (e.g. the tiny tokenizer's
    ``${data.cache_dir}`` when the data is not the synthetic set)."""
    from omegaconf.errors import (
        InterpolationKeyError,
        InterpolationResolutionError,
        InterpolationToMissingValueError,
    )

    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    found = []
    for key in keys:
        name = f"{prefix}.{key}" if isinstance(node, DictConfig) else f"{prefix}[{key}]"
        if OmegaConf.is_interpolation(node, key):
            try:
                node[key]
            except InterpolationToMissingValueError:
                pass  # points at a ??? value, reported by _check_required
            except (InterpolationKeyError, InterpolationResolutionError) as error:
                text = node._get_node(key)._value()
                found.append(
                    Problem(
                        name,
                        f"{text} does not resolve ({error.msg.splitlines()[0]})",
                        _fix_for_missing_key(error),
                    )
                )
        elif not OmegaConf.is_missing(node, key):
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                found.extend(_broken_interpolations(child, name))
    return found


def _check_required(cfg: DictConfig) -> list[Problem]:
    """Values left as ``???`` in the groups the task uses (e.g. data.shards of data=laion)."""
    problems = []
    for group in GROUPS_OF_TASK[cfg.task]:
        if group == "benchmark" and cfg.task == "train" and _get(cfg, "trainer.benchmark_at_end") is False:
            continue  # training without the final benchmark never reads it
        if group in cfg and isinstance(cfg[group], DictConfig):
            for key in _missing_keys(cfg[group], group):
                problems.append(Problem(key, "is required (???)", f"{key}=<value>"))
            problems.extend(_broken_interpolations(cfg[group], group))
    return problems


def _deleted_on_command_line(cfg: DictConfig) -> set[str]:
    """The groups removed with `~group` (or `~group=option`) among Hydra's overrides of this job."""
    from hydra.core.hydra_config import HydraConfig

    if "hydra" in cfg:
        overrides = cfg.hydra.overrides.task
    elif HydraConfig.initialized():
        overrides = HydraConfig.get().overrides.task
    else:
        return set()  # a config built by hand, e.g. a test's: it holds the groups it means to
    texts = OmegaConf.to_container(overrides, resolve=False)  # `x=${oc.env:X}` stays text here
    return {o[1:].split("=", 1)[0] for o in texts if o.startswith("~")}


def _removed_groups(cfg: DictConfig) -> list[Problem]:
    """Groups the task needs that were removed (`~optimizer`). The experiment's values for that group
    remain without the group's `_target_` and defaults, and would fail only once the run is under way."""
    task = cfg.get("task")
    deleted = _deleted_on_command_line(cfg)
    problems = []
    for group in (*NEEDED_GROUPS.get(task, ()), *EVERY_TASK_NEEDS):
        if group in deleted:
            options = "|".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))
            fix = f"drop ~{group}, or choose one: {group}={options}"
            problems.append(Problem(group, f"is removed, but task={task} needs it", fix))
    return problems


def planned_world_size(cfg: DictConfig) -> int:
    """Processes of the run: nodes x processes per node; under an outside launcher (torchrun run.py)
    the launcher's WORLD_SIZE."""
    from libra.launch import STARTED_BY_OUTSIDE_LAUNCHER

    if STARTED_BY_OUTSIDE_LAUNCHER and cfg.cluster.launcher == "local":
        return int(os.environ.get("WORLD_SIZE", "1"))
    return int(cfg.cluster.nodes) * int(cfg.cluster.gpus_per_node)


# --- cross-field rules: each returns the problems it finds ----------------------------------------


def batch_problems(global_batch_size: int, micro_batch_size: int, world_size: int) -> list[Problem]:
    """global = micro x accumulation x world: a global batch that does not divide is refused, never
    rounded (the pre-launch check and libra/train/deepspeed_config.py both ask here)."""
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step == 0:
        return []
    nearest = max(per_step, round(global_batch_size / per_step) * per_step)
    return [
        Problem(
            "trainer.global_batch_size",
            f"{global_batch_size} is not a multiple of trainer.micro_batch_size ({micro_batch_size}) x world"
            f" size ({world_size}) = {per_step}",
            f"trainer.global_batch_size={nearest}  (or another multiple of {per_step})",
        )
    ]


def _rule_batch_divisible(cfg: DictConfig) -> list[Problem]:
    if cfg.task != "train":
        return []
    return batch_problems(
        cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size, planned_world_size(cfg)
    )


def offload_problems(stage: int, offload_optimizer: bool, offload_param: bool) -> list[Problem]:
    """What ZeRO offload needs of the stage (the pre-launch check and ZeroSettings both ask here)."""
    problems = []
    if offload_param and stage != 3:
        problems.append(
            Problem(
                "deepspeed.offload_param",
                f"parameter offload needs ZeRO-3, got deepspeed.stage={stage}",
                "deepspeed=zero3_offload  (or deepspeed.offload_param=false)",
            )
        )
    if offload_optimizer and stage == 0:
        problems.append(
            Problem(
                "deepspeed.offload_optimizer",
                "optimizer offload needs ZeRO (stage >= 1), got deepspeed.stage=0",
                "deepspeed=zero2_offload  (or deepspeed.offload_optimizer=false)",
            )
        )
    return problems


def _rule_offload(cfg: DictConfig) -> list[Problem]:
    def flag(name: str) -> Any:  # the ZeroSettings default when a hand-built config leaves it out
        value = _get(cfg, f"deepspeed.{name}")
        return getattr(config_schema.ZeroFields, name) if value is _ABSENT else value

    return offload_problems(cfg.deepspeed.stage, flag("offload_optimizer"), flag("offload_param"))


def live_benchmark_problems(stage: int, benchmark_every: int) -> list[Problem]:
    """Benchmarks during training need all parameters on every rank (the pre-launch check and the
    recipe both ask here): under ZeRO-3 ranks would generate different numbers of tokens, hence run
    different numbers of parameter gathers, and wait for each other forever."""
    if benchmark_every <= 0 or stage != 3:
        return []
    return [
        Problem(
            "trainer.benchmark_every",
            f"{benchmark_every}: benchmarks during training do not work with ZeRO-3 (deepspeed.stage=3)",
            "trainer.benchmark_every=0  (the benchmark at the end still runs; or deepspeed=zero2)",
        )
    ]


def _rule_live_benchmark(cfg: DictConfig) -> list[Problem]:
    every = _get(cfg, "trainer.benchmark_every")
    if cfg.task != "train" or not isinstance(every, int):
        return []
    return live_benchmark_problems(cfg.deepspeed.stage, every)


def _rule_objective(cfg: DictConfig) -> list[Problem]:
    """`objective` is read from `<run dir>/metrics.json` after the task (libra/launch.py), which only the
    final benchmark writes: a sweep whose runs cannot have it would fail after each trial's training."""
    if cfg.objective is None or cfg.task not in ("train", "benchmark"):
        return []
    benchmark = _get(cfg, "benchmark")
    if benchmark is _ABSENT:  # a hand-built config without the group: nothing to compare with
        return []
    if cfg.task == "train" and (benchmark is None or _get(cfg, "trainer.benchmark_at_end") is False):
        return [
            Problem(
                "objective",
                f"{cfg.objective!r} is read from the final benchmark's metrics.json, and this run has no "
                "final benchmark (trainer.benchmark_at_end=false or benchmark=null)",
                "trainer.benchmark_at_end=true  (or objective=null)",
            )
        ]
    tasks = sorted(k for k, v in (benchmark or {}).items() if isinstance(v, dict))  # not `precision`
    parts = str(cfg.objective).split("/")
    if len(parts) == 3 and parts[0] in ("benchmark", "baseline") and parts[1] not in tasks:
        return [
            Problem(
                "objective",
                f"{cfg.objective!r} names the benchmark task {parts[1]!r}, which this run does not run "
                f"(benchmark tasks: {', '.join(tasks) or 'none'})",
                f"objective={parts[0]}/<one of {', '.join(tasks)}>/<metric>  (or run that task)",
            )
        ]
    return []


def _rule_launcher(cfg: DictConfig) -> list[Problem]:
    launcher, processes = cfg.cluster.launcher, int(cfg.cluster.nodes) * int(cfg.cluster.gpus_per_node)
    if launcher == "local" and processes != 1:
        return [
            Problem(
                "cluster.gpus_per_node",
                f"cluster=local runs one process (or the ranks an outside launcher starts), but "
                f"nodes x gpus_per_node = {processes}",
                f"cluster=torchrun cluster.gpus_per_node={cfg.cluster.gpus_per_node}"
                "  (or cluster.gpus_per_node=1)",
            )
        ]
    if launcher == "torchrun" and cfg.cluster.nodes > 1 and cfg.cluster.get("rdzv_id") is None:
        node_rank, nodes = cfg.cluster.get("node_rank"), cfg.cluster.nodes
        if not isinstance(node_rank, int) or isinstance(node_rank, bool) or not 0 <= node_rank < nodes:
            return [
                Problem(
                    "cluster.node_rank",
                    f"{node_rank!r}: with {nodes} nodes and static rendezvous each node needs its rank",
                    f"cluster.node_rank=<0..{nodes - 1}>  (or cluster.rdzv_id=<job id> for c10d)",
                )
            ]
    return []


def _rule_task_inputs(cfg: DictConfig) -> list[Problem]:
    problems = []
    if cfg.task in ("benchmark", "chat", "generate", "serve", "demo") and cfg.checkpoint is None:
        problems.append(Problem("checkpoint", f"task={cfg.task} needs a checkpoint", "checkpoint=<run dir>"))
    # ~ is expanded as libra.pretrained.resolve_pretrained expands it
    if (
        cfg.checkpoint is not None
        and cfg.task != "train"
        and not os.path.isdir(os.path.expanduser(cfg.checkpoint))
    ):
        problems.append(
            Problem(
                "checkpoint",
                f"{cfg.checkpoint!r} is not a folder",
                "checkpoint=<export folder, run dir, checkpoints/step_* folder or official release>",
            )
        )
    if cfg.task in ("chat", "generate") and not cfg.prompt:
        problems.append(
            Problem("prompt", f"task={cfg.task} needs a prompt", 'prompt="What is in the image?"')
        )
    if cfg.task == "chat" and cfg.image is not None:
        problems.extend(_image_problems(cfg.image))
    if cfg.task == "generate" and cfg.image is not None:
        problems.append(
            Problem("image", "task=generate makes images from text; it takes no input image", "image=null")
        )
    if cfg.resume not in (None, "auto") and not os.path.isdir(os.path.expanduser(cfg.resume)):
        problems.append(Problem("resume", f"{cfg.resume!r} is neither auto nor a run dir", "resume=auto"))
    return problems


def _image_problems(image: str) -> list[Problem]:
    """`image=` of task=chat must be an image file that can be decoded: its header is read here, so
    that a text file or a decompression bomb is refused before the model loads."""
    from libra.tokenizer.image_processing import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, open_header

    fix = "image=<path of a JPEG, PNG or WebP image>  (or image=null)"
    if not os.path.isfile(os.path.expanduser(image)):
        return [Problem("image", f"{image!r} is not a file", fix)]
    try:
        with open_header(os.path.expanduser(image), DEFAULT_MAX_IMAGE_PIXELS):
            pass
    except ImageTooLarge as err:
        return [Problem("image", f"{image!r} is too large: {err}", "downscale it, or " + fix)]
    except (OSError, SyntaxError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        return [Problem("image", f"{image!r} is not an image Pillow can read", fix)]
    return []


def _rule_precision(cfg: DictConfig) -> list[Problem]:
    """One precision per run: the DeepSpeed JSON and autocast take `trainer.precision`; a benchmark
    that declares its own must match it, or the scores at the end of training would measure a
    different numeric model than the one trained."""
    benchmark_precision = _get(cfg, "benchmark.precision")
    if cfg.task != "train" or benchmark_precision in (_ABSENT, _MISSING, None):
        return []
    if benchmark_precision == cfg.trainer.precision:
        return []
    return [
        Problem(
            "benchmark.precision",
            f"{benchmark_precision!r} differs from trainer.precision={cfg.trainer.precision!r}",
            f"benchmark.precision={cfg.trainer.precision}  (or trainer.precision={benchmark_precision})",
        )
    ]


def checkpoint_shape_problems(folder: str | os.PathLike, key: str) -> list[Problem]:
    """Model vs vision tokenizer of one checkpoint folder, from its small json/yaml files only.

    * image-token count: ``max_vision_token_length`` of config.json == the vision tokenizer's;
    * ``contiguous_signal_size`` == CLIP width x number of selected CLIP layers (the official config's
      code default 2048 against a 4-layer tokenizer is docs/design.md B14);
    * ``vision_vocab_size`` == codes + boi + eoi, ``vision_codebook_num`` == the tokenizer's codebooks.
    ``key`` is the config key that named the folder (checkpoint, model.init_from).
    """
    import json

    import yaml

    from libra.pretrained import resolve_pretrained

    root = Path(folder).expanduser()
    if not (root / "config.json").is_file():
        try:
            root = resolve_pretrained(folder).files  # a run dir or step folder: where its config.json is
        except (FileNotFoundError, ValueError) as error:  # ValueError: a damaged weight file
            return [Problem(key, str(error), f"{key}=<export folder, run dir or checkpoints/step_* folder>")]
    model_file, vision_file = root / "config.json", root / "vision_tokenizer_config.yaml"
    for needed in (model_file, vision_file):
        if not needed.is_file():
            return [
                Problem(
                    key,
                    f"{str(folder)!r} is not a Libra checkpoint folder (no {needed.name})",
                    f"{key}=<folder with config.json and vision_tokenizer_config.yaml>",
                )
            ]
    # a damaged file is reported like any other problem, not as a parser's traceback
    try:
        model = json.loads(model_file.read_text())
        if not isinstance(model, dict):
            raise TypeError(f"a {type(model).__name__}, not a JSON object")
    except (OSError, ValueError, TypeError) as error:
        return [_unreadable(key, model_file, error)]
    try:
        vision = yaml.safe_load(vision_file.read_text())
        params, dd = vision["params"], vision["params"]["ddconfig"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        return [_unreadable(key, vision_file, error)]
    clip_file = root / dd["encoder_name"] / "config.json"
    problems = []

    def expect(field: str, wanted: int, why: str) -> None:
        if field in model and model[field] != wanted:
            problems.append(
                Problem(
                    key,
                    f"{model_file}: {field}={model[field]}, but {why} gives {wanted}",
                    f"set {field} to {wanted} in {model_file}, or use a matching checkpoint",
                )
            )

    if "max_vision_token_length" in vision:
        expect(
            "max_vision_token_length",
            vision["max_vision_token_length"],
            "the vision tokenizer's image length",
        )
    expect("vision_vocab_size", params["codebook_size"] + 2, "codebook_size + boi + eoi")
    expect("vision_codebook_num", params["num_codebook"], "the vision tokenizer's num_codebook")
    if clip_file.is_file():
        clip = json.loads(clip_file.read_text())
        width = clip.get("vision_config", {}).get("hidden_size", clip.get("hidden_size"))
        layers = len(dd["select_layer"])
        expect("contiguous_signal_size", width * layers, f"CLIP width {width} x {layers} selected layers")
    return problems


def _unreadable(key: str, file: Path, error: Exception) -> Problem:
    return Problem(
        key,
        f"{file} is unreadable ({type(error).__name__}: {error})",
        f"{key}=<a checkpoint folder whose files are intact>  (re-export or re-download it)",
    )


def _rule_checkpoint_shapes(cfg: DictConfig) -> list[Problem]:
    """Image-token count and CLIP feature width agree between model and tokenizer of the folders read."""
    problems = []
    if (
        cfg.task != "train"
        and cfg.checkpoint is not None
        and os.path.isdir(os.path.expanduser(cfg.checkpoint))
    ):
        problems += checkpoint_shape_problems(cfg.checkpoint, "checkpoint")
    init_from = _get(cfg, "model.init_from")
    if cfg.task == "train" and isinstance(init_from, str) and os.path.isdir(os.path.expanduser(init_from)):
        problems += checkpoint_shape_problems(init_from, "model.init_from")
    return problems


def _rule_lora_freezes_the_base(cfg: DictConfig) -> list[Problem]:
    """finetune=lora freezes the whole base and trains only adapters (libra/train/lora.py): stage 1's
    freezing of the language half on top would be silently moot."""
    lora = _get(cfg, "finetune._target_") == "libra.train.lora.LoraFinetune"
    if cfg.task != "train" or not lora or _get(cfg, "trainer.freeze_language") is not True:
        return []
    return [
        Problem(
            "trainer.freeze_language",
            "is true with finetune=lora, which freezes the whole base and trains only its adapters",
            "trainer.freeze_language=false, and pick the adapted layers with finetune.target_modules "
            "(e.g. only the vision_* ones to leave the language model as it is)",
        )
    ]


def _rule_model_config(cfg: DictConfig) -> list[Problem]:
    """LibraConfig's own checks (the heads divide the width, the head dim is even, ...) on the model
    keys a run sets: a sweep point that fails them failed when its job built the model, after the jobs
    before it had trained. The shapes the tokenizer gives are not known here: their defaults stand in."""
    model = cfg.get("model")
    if cfg.task != "train" or not isinstance(model, DictConfig):
        return []
    from dataclasses import fields as config_fields

    from huggingface_hub.errors import StrictDataclassError

    from libra.model.config import LibraConfig

    known = {f.name for f in config_fields(LibraConfig)}
    values = {}
    for key in (k for k in model if k in known):  # each alone: model.folder may interpolate a ???
        try:
            value = _get(cfg, f"model.{key}")
        except OmegaConfBaseException:  # a broken interpolation: reported by its own check
            continue
        if value not in (_ABSENT, _MISSING):
            values[key] = value
    try:
        LibraConfig(**values)
    except (ValueError, TypeError, StrictDataclassError) as err:
        said = " ".join(str(err).removeprefix("LibraConfig: ").split())
        keys = " ".join(f"model.{key}" for key in values if key in str(err)) or "the model.* keys"
        return [Problem("model", said, f"change {keys} (the checks: libra/model/config.py)")]
    return []


RULES: list[Callable[[DictConfig], list[Problem]]] = [
    _rule_batch_divisible,
    _rule_offload,
    _rule_live_benchmark,
    _rule_objective,
    _rule_launcher,
    _rule_task_inputs,
    _rule_precision,
    _rule_checkpoint_shapes,
    _rule_lora_freezes_the_base,
    _rule_model_config,
]


def validate_jobs(config_loader, config: DictConfig, job_overrides: Sequence[Sequence[str]]) -> None:
    """Validate the config of every job of a multirun before any starts (the launchers of
    hydra_plugins/ call it): a bad point of a sweep fails at once, not after the points before it."""
    for overrides in job_overrides:
        validate(config_loader.load_sweep_config(config, list(overrides)))


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming every problem of ``cfg``; return None when it can run."""
    removed = _removed_groups(cfg)
    gone = tuple(f"{problem.key}." for problem in removed)  # their keys' problems say nothing more
    problems = removed + [p for p in _check_values(cfg) + _unknown_keys(cfg) if not p.key.startswith(gone)]
    if not problems:  # the rules assume well-typed values
        problems = _check_required(cfg)
        for rule in RULES:
            problems.extend(rule(cfg))
    raise_problems(problems)
