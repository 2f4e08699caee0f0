"""Validation of the composed config before any work: a typed schema plus cross-field rules.

``validate(cfg)`` raises ``ConfigError`` listing every problem at once; each names the key, what is
wrong and the override that fixes it, e.g.

    trainer.global_batch_size: 10 is not a multiple of trainer.micro_batch_size (4) x world size (1) = 4
      fix: trainer.global_batch_size=12  (or another multiple of 4)

run.py calls it before dispatching, and the SLURM launcher calls it on the submitting machine for
every job of a sweep, so a bad config never waits in a queue. Imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from libra.launch import TASKS as ENTRY_POINTS

TASKS = tuple(ENTRY_POINTS)  # train, benchmark, chat, generate
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


@dataclass(frozen=True)
class Field:
    """One schema entry: the Python type(s) of the value, and optionally the allowed values."""

    types: tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # null allowed
    positive: bool = False
    non_negative: bool = False  # 0 allowed (e.g. an interval of 0 = never)
    default: Any = None  # the value the reading class uses when the key is absent (None: required)


# The keys the toolkit itself relies on across groups; each group's own fields are checked by the
# class its `_target_` names (LibraConfig, ZeroSettings, ...) when it is built.
SCHEMA: dict[str, Field] = {
    "task": Field((str,), choices=TASKS),
    "seed": Field((int,)),
    "print_config": Field((str,), choices=("diff", "full", "none"), default="diff"),
    "checkpoint": Field((str,), optional=True),
    "resume": Field((str,), optional=True),
    "objective": Field((str,), optional=True),
    "prompt": Field((str,), optional=True),
    "image": Field((str,), optional=True),
    "max_new_tokens": Field((int,), positive=True),
    "temperature": Field((int, float)),
    "cluster.launcher": Field((str,), choices=LAUNCHERS),
    "cluster.nodes": Field((int,), positive=True),
    "cluster.gpus_per_node": Field((int,), positive=True),
    "trainer.global_batch_size": Field((int,), positive=True),
    "trainer.micro_batch_size": Field((int,), positive=True),
    "trainer.precision": Field((str,), choices=PRECISIONS),
    "trainer.grad_clip": Field((int, float), positive=True),
    "trainer.compile": Field((bool,), default=False),
    # trainer / optimizer keys that the recipe reads (defaults: the values the classes fall back to)
    "trainer.max_steps": Field((int,), positive=True, default=1000),
    "trainer.log_every": Field((int,), positive=True, default=10),
    "trainer.eval_every": Field((int,), non_negative=True, default=200),
    "trainer.eval_batches": Field((int,), positive=True, default=10),
    "trainer.checkpoint_every": Field((int,), non_negative=True, default=500),
    "trainer.keep_last": Field((int,), non_negative=True, default=2),
    "trainer.num_workers": Field((int,), non_negative=True, default=2),
    "trainer.max_bad_steps": Field((int,), positive=True, default=3),
    "trainer.benchmark_every": Field((int,), non_negative=True, default=0),
    "optimizer.lr": Field((int, float), positive=True, default=1e-4),
    "optimizer.weight_decay": Field((int, float), non_negative=True, default=0.0),
    "deepspeed.stage": Field((int,), choices=(0, 1, 2, 3)),
    # ZeroSettings defaults: stage0/zero2/zero3 files leave the offload flags out
    "deepspeed.offload_optimizer": Field((bool,), default=False),
    "deepspeed.offload_param": Field((bool,), default=False),
    # logger=wandb (logger=none has no backend: these are absent there)
    "logger.log_artifacts": Field((bool,), default=False),
    "logger.backend.mode": Field((str,), choices=("auto", "online", "offline", "disabled"), default="auto"),
    "logger.backend.console": Field((str,), choices=("wrap", "redirect", "off"), default="wrap"),
    "logger.backend.system_metrics": Field((bool,), default=True),
    "logger.backend.upload_max_mb": Field((int, float), default=64),
}

# Keys only some tasks read: checked for those tasks.
_SERVE_BLOCK = {
    "serve.host": Field((str,)),
    "serve.port": Field((int,), positive=True),
    "serve.api_key": Field((str,), optional=True),
    "serve.model_name": Field((str,)),
    "serve.allow_local_paths": Field((bool,)),
    "serve.max_images": Field((int,), positive=True),
    "serve.max_batch_size": Field((int,), positive=True),
    "serve.batch_window_ms": Field((int, float)),
}
TASK_SCHEMA: dict[str, dict[str, Field]] = {"serve": _SERVE_BLOCK, "demo": _SERVE_BLOCK}

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


def _check_schema(cfg: DictConfig) -> list[Problem]:
    problems = []
    for key, field in {**SCHEMA, **TASK_SCHEMA.get(cfg.get("task"), {})}.items():
        value = _get(cfg, key)
        if value is _ABSENT and field.default is not None:
            continue
        if value is _ABSENT:
            problems.append(
                Problem(key, "is not set", f"add {key}=<value> (or pick a config group that has it)")
            )
            continue
        if value is _MISSING or value is None:
            if not field.optional and value is None:
                problems.append(Problem(key, "is null", f"{key}=<value>"))
            continue
        # bool is an int in Python; an int field given true/false is a mistake, not a 1.
        wrong_type = not isinstance(value, field.types) or (
            isinstance(value, bool) and bool not in field.types
        )
        if wrong_type:
            names = " or ".join(t.__name__ for t in field.types)
            problems.append(
                Problem(key, f"{value!r} is a {type(value).__name__}, expected {names}", f"{key}=<{names}>")
            )
        elif field.choices is not None and value not in field.choices:
            options = " | ".join(str(c) for c in field.choices)
            problems.append(Problem(key, f"{value!r} is not one of {options}", f"{key}={field.choices[0]}"))
        elif field.positive and value <= 0:
            problems.append(Problem(key, f"{value} must be > 0", f"{key}=<positive value>"))
        elif field.non_negative and value < 0:
            problems.append(Problem(key, f"{value} must be >= 0", f"{key}=0  (or a positive value)"))
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
                        "pick config groups that go together, or set the missing key",
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


def world_size(cfg: DictConfig) -> int:
    """Processes of the run: nodes x processes per node; under an outside launcher (torchrun run.py)
    the launcher's WORLD_SIZE."""
    from libra.launch import STARTED_BY_OUTSIDE_LAUNCHER

    if STARTED_BY_OUTSIDE_LAUNCHER and cfg.cluster.launcher == "local":
        return int(os.environ.get("WORLD_SIZE", "1"))
    return int(cfg.cluster.nodes) * int(cfg.cluster.gpus_per_node)


# --- cross-field rules: each returns the problems it finds ----------------------------------------


def _rule_batch_divisible(cfg: DictConfig) -> list[Problem]:
    if cfg.task != "train":
        return []
    total, micro, world = cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size, world_size(cfg)
    per_step = micro * world
    if total % per_step == 0:
        return []
    nearest = max(per_step, round(total / per_step) * per_step)
    return [
        Problem(
            "trainer.global_batch_size",
            f"{total} is not a multiple of trainer.micro_batch_size ({micro}) x world size ({world})"
            f" = {per_step}",
            f"trainer.global_batch_size={nearest}  (or another multiple of {per_step})",
        )
    ]


def _setting(cfg: DictConfig, key: str) -> Any:
    """A schema key's value, or its schema default when the config leaves it out."""
    value = _get(cfg, key)
    return SCHEMA[key].default if value is _ABSENT else value


def _rule_offload(cfg: DictConfig) -> list[Problem]:
    ds = cfg.deepspeed
    offload_param, offload_optimizer = (
        _setting(cfg, "deepspeed.offload_param"),
        _setting(cfg, "deepspeed.offload_optimizer"),
    )
    problems = []
    if offload_param and ds.stage != 3:
        problems.append(
            Problem(
                "deepspeed.offload_param",
                f"parameter offload needs ZeRO-3, got deepspeed.stage={ds.stage}",
                "deepspeed=zero3_offload  (or deepspeed.offload_param=false)",
            )
        )
    if offload_optimizer and ds.stage == 0:
        problems.append(
            Problem(
                "deepspeed.offload_optimizer",
                "optimizer offload needs ZeRO (stage >= 1), got deepspeed.stage=0",
                "deepspeed=zero2_offload  (or deepspeed.offload_optimizer=false)",
            )
        )
    return problems


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
    if cfg.checkpoint is not None and cfg.task != "train" and not os.path.isdir(cfg.checkpoint):
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
    if cfg.task == "chat" and cfg.image is not None and not os.path.isfile(cfg.image):
        problems.append(
            Problem("image", f"{cfg.image!r} is not a file", "image=<path of an image>  (or image=null)")
        )
    if cfg.task == "generate" and cfg.image is not None:
        problems.append(
            Problem("image", "task=generate makes images from text; it takes no input image", "image=null")
        )
    if cfg.resume not in (None, "auto") and not os.path.isdir(cfg.resume):
        problems.append(Problem("resume", f"{cfg.resume!r} is neither auto nor a run dir", "resume=auto"))
    return problems


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

    root = Path(folder)
    if not (root / "config.json").is_file():
        try:
            root = resolve_pretrained(folder).files  # a run dir or step folder: where its config.json is
        except FileNotFoundError as error:
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
    model = json.loads(model_file.read_text())
    vision = yaml.safe_load(vision_file.read_text())
    params, dd = vision["params"], vision["params"]["ddconfig"]
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


def _rule_checkpoint_shapes(cfg: DictConfig) -> list[Problem]:
    """Image-token count and CLIP feature width agree between model and tokenizer of the folders read."""
    problems = []
    if cfg.task != "train" and cfg.checkpoint is not None and os.path.isdir(cfg.checkpoint):
        problems += checkpoint_shape_problems(cfg.checkpoint, "checkpoint")
    init_from = _get(cfg, "model.init_from")
    if cfg.task == "train" and isinstance(init_from, str) and os.path.isdir(init_from):
        problems += checkpoint_shape_problems(init_from, "model.init_from")
    return problems


RULES: list[Callable[[DictConfig], list[Problem]]] = [
    _rule_batch_divisible,
    _rule_offload,
    _rule_launcher,
    _rule_task_inputs,
    _rule_precision,
    _rule_checkpoint_shapes,
]


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming every problem of ``cfg``; return None when it can run."""
    problems = _check_schema(cfg)
    if not problems:  # the rules assume well-typed values
        problems = _check_required(cfg)
        for rule in RULES:
            problems.extend(rule(cfg))
    if problems:
        raise ConfigError(problems)
