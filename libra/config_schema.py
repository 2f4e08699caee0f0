"""The types of the config groups, registered in Hydra's ConfigStore so that composition checks them.

Each yaml file of a typed group starts from its dataclass here (``defaults: [/schema_<group>_<name>@_here_,
_self_]`` in the file; conf/config.yaml does the same for the root keys), so an unknown key or a value
of the wrong type fails while Hydra composes, naming the key and, for yaml files, the file:

    python run.py trainer.max_steps=abc   ->  Error merging override trainer.max_steps=abc
                                              Value 'abc' of type 'str' could not be converted to Integer
    experiments/x.yaml with `max_stepz:`  ->  In 'experiment/x': Key 'max_stepz' not in 'TrainerConfig'

The yaml files keep the values and their comments; these classes hold only the types (``MISSING``: the
file gives the value). Ranges and cross-field rules are not here: they live once in libra/validation.py,
which also reads these classes to check the types of configs built by hand.

Typed: the root keys (task inputs, serve, synthetic), trainer, optimizer, scheduler, cluster, logger,
finetune and deepspeed. Free (``Any``): model, tokenizer, data and benchmark, whose nodes are the
arguments of the ``_target_`` they name; that class's signature checks them when it is built.

Importing this module registers the schemas; libra/validation.py imports it, and so does the Hydra
plugin package hydra_plugins/libra_config_schema, so every compose of conf/ (run.py, tests, notebooks)
finds them. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class SyntheticConfig:
    """The synthetic shapes set's generator (root key `synthetic`, libra/data/synthetic.py)."""

    seed: int = MISSING
    image_size: int = MISSING
    train_images: int = MISSING
    val_images: int = MISSING
    test_images: int = MISSING
    questions_per_image: int = MISSING
    images_per_shard: int = MISSING


@dataclass
class ServeConfig:
    """task=serve / task=demo (libra/serve)."""

    host: str = MISSING
    port: int = MISSING
    api_key: str | None = None
    model_name: str = MISSING
    allow_local_paths: bool = MISSING
    max_images: int = MISSING
    max_request_mb: float = MISSING
    max_batch_size: int = MISSING
    batch_window_ms: float = MISSING


@dataclass
class RootConfig:
    """conf/config.yaml: the task and its arguments; each group's node is typed by its own schema."""

    task: str = MISSING
    cache_dir: str = MISSING
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    print_config: str = MISSING
    seed: int = MISSING
    name: str = MISSING
    group: str = MISSING
    run_dir: str = MISSING
    checkpoint: str | None = None
    resume: str | None = None
    objective: str | None = None
    prompt: str | None = None
    image: str | None = None
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    serve: ServeConfig = field(default_factory=ServeConfig)
    # the groups (conf/<group>/); Any here, typed by the option's own schema where it has one
    model: Any = MISSING
    tokenizer: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    deepspeed: Any = MISSING
    cluster: Any = MISSING
    logger: Any = MISSING
    trainer: Any = MISSING
    finetune: Any = MISSING
    benchmark: Any = MISSING


@dataclass
class TrainerConfig:
    """conf/trainer/*.yaml: the loop of libra/train/recipe.py."""

    max_steps: int = MISSING
    global_batch_size: int = MISSING
    micro_batch_size: int = MISSING
    precision: str = MISSING
    grad_clip: float = MISSING
    gradient_checkpointing: bool = MISSING
    compile: bool = MISSING
    freeze_language: bool = MISSING
    num_workers: int = MISSING
    log_every: int = MISSING
    eval_every: int = MISSING
    eval_batches: int = MISSING
    checkpoint_every: int = MISSING
    keep_last: int = MISSING
    max_bad_steps: int = MISSING
    benchmark_every: int = MISSING
    benchmark_items: int = MISSING
    benchmark_at_end: bool = MISSING
    peak_flops_per_device: float = MISSING


@dataclass
class AdamWConfig:
    """conf/optimizer/adamw.yaml: the arguments of libra.train.optim.build_adamw."""

    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING
    llm_lr_scale: float = MISSING


@dataclass
class ConstantScheduleConfig:
    """conf/scheduler/constant.yaml: libra.train.optim.constant_schedule."""

    _target_: str = MISSING
    _partial_: bool = True
    warmup_steps: int | None = None
    warmup_ratio: float = MISSING


@dataclass
class CosineScheduleConfig(ConstantScheduleConfig):
    """conf/scheduler/cosine.yaml: libra.train.optim.cosine_schedule."""

    min_lr_ratio: float = MISSING


@dataclass
class LocalClusterConfig:
    """conf/cluster/local.yaml: one process (libra/launch.py)."""

    launcher: str = MISSING
    nodes: int = MISSING
    gpus_per_node: int = MISSING


@dataclass
class TorchrunClusterConfig(LocalClusterConfig):
    """conf/cluster/torchrun.yaml."""

    master_addr: str = MISSING
    master_port: int = MISSING
    node_rank: int = MISSING
    rdzv_id: str | None = None


@dataclass
class SlurmClusterConfig(LocalClusterConfig):
    """conf/cluster/slurm.yaml (the `cluster` node; its `hydra.launcher` part is the launcher's own)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_min: int = MISSING
    cpus_per_task: int = MISSING
    mem_gb: int | None = None
    setup: list[str] = field(default_factory=list)
    dry_run: bool = MISSING


@dataclass
class NoLoggerConfig:
    """conf/logger/none.yaml: metrics.jsonl only."""

    backend: Any | None = None
    log_artifacts: bool = MISSING


@dataclass
class WandbBackendConfig:
    """The arguments of libra.tracking.WandbLogger (conf/logger/wandb.yaml `backend`)."""

    _target_: str = MISSING
    project: str = MISSING
    entity: str | None = None
    name: str | None = None
    group: str = MISSING
    job_type: str = MISSING
    tags: list[str] = MISSING
    mode: str = MISSING
    system_metrics: bool = MISSING
    console: str = MISSING
    upload_max_mb: float = MISSING
    experiment: str = MISSING
    overrides: Any = MISSING  # Hydra's list of the job's overrides
    sweep_dir: str | None = None
    sweep_params: Any = None  # Hydra's sweeper parameters (a mapping), when a sweeper has any


@dataclass
class WandbLoggerConfig:
    """conf/logger/wandb.yaml."""

    log_artifacts: bool = MISSING
    backend: WandbBackendConfig = field(default_factory=WandbBackendConfig)


@dataclass
class FullFinetuneConfig:
    """conf/finetune/full.yaml: libra.train.lora.FullFinetune takes no arguments."""

    _target_: str = MISSING


@dataclass
class LoraFinetuneConfig(FullFinetuneConfig):
    """conf/finetune/lora.yaml: the arguments of libra.train.lora.LoraFinetune."""

    rank: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    target_modules: list[str] = MISSING
    base_dtype: str = MISSING


@dataclass
class ZeroFields:
    """What differs between the DeepSpeed set-ups (libra/train/deepspeed_config.py `ZeroSettings` adds
    the behaviour); the conf/deepspeed/*.yaml files set only what differs from these defaults."""

    stage: int = 0  # 0: plain data parallel, 2: shard optimizer + grads, 3: shard parameters too
    offload_optimizer: bool = False  # optimizer state and step on the CPU (ZeRO-2/3)
    offload_param: bool = False  # parameters on the CPU between uses (ZeRO-3 only)
    overlap_comm: bool = False  # overlap gradient reduction with backward; more memory
    contiguous_gradients: bool = True  # copy grads into one buffer as they are produced (less fragmentation)
    reduce_bucket_size: int = 200_000_000  # elements per all-reduce/reduce-scatter bucket
    allgather_bucket_size: int = 200_000_000  # ZeRO-2 parameter all-gather bucket
    stage3_prefetch_bucket_size: int = 50_000_000  # ZeRO-3: parameters fetched ahead of use
    stage3_param_persistence_threshold: int = 100_000  # ZeRO-3: smaller params stay unsharded
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_max_reuse_distance: int = 1_000_000_000
    pin_memory: bool = True  # pinned CPU buffers for offload (faster H2D copies)


@dataclass
class DeepSpeedConfig(ZeroFields):
    """conf/deepspeed/*.yaml: the fields of ZeroSettings, which `_target_` names."""

    _target_: str = MISSING


# group -> {option: schema}; a yaml file conf/<group>/<option>.yaml extends /schema_<group>_<option>.
# validation.py reads this table for the types of hand-made configs (the union over a group's options).
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "trainer": {"default": TrainerConfig},
    "optimizer": {"adamw": AdamWConfig},
    "scheduler": {"cosine": CosineScheduleConfig, "constant": ConstantScheduleConfig},
    "cluster": {"local": LocalClusterConfig, "torchrun": TorchrunClusterConfig, "slurm": SlurmClusterConfig},
    "logger": {"wandb": WandbLoggerConfig, "none": NoLoggerConfig},
    "finetune": {"full": FullFinetuneConfig, "lora": LoraFinetuneConfig},
    "deepspeed": {"deepspeed": DeepSpeedConfig},
}
ROOT_SCHEMA_NAME = "libra_root_schema"


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent: storing again replaces the entry).

    As configs of the root, not of a group (`schema_<group>_<option>`), so that `--help` and
    `group=option` list only the yaml options."""
    store = ConfigStore.instance()
    store.store(name=ROOT_SCHEMA_NAME, node=RootConfig, provider="libra")
    for group, options in GROUP_SCHEMAS.items():
        for option, schema in options.items():
            store.store(name=schema_name(group, option), node=schema, provider="libra")


def load_option(path: str | Path) -> DictConfig:
    """A group option's yaml file read on its own, outside Hydra (a test's or perf script's hand-built
    config): its values, without the defaults list that names its schema for composition."""
    node = OmegaConf.load(path)
    assert isinstance(node, DictConfig), f"{path}: a config group option is a mapping"
    node.pop("defaults", None)
    return node


def schema_name(group: str, option: str) -> str:
    """The ConfigStore name of a group option's schema, which its yaml file extends."""
    return f"schema_{group}_{option}"


register_schemas()
