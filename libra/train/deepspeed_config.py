"""The DeepSpeed JSON, generated from our config instead of a file full of "auto" (docs/design.md §7.3).

The official configs leave batch sizes, precision and clipping on "auto" for the HF Trainer to fill,
and the ZeRO-3 file simply has no `gradient_clipping`, so instruction tuning ran unclipped
(docs/design.md B6). Here every value is explicit, clipping is set for every stage, and the exact
JSON DeepSpeed saw is written to the run directory. One `ZeroSettings` object covers stage 0 / ZeRO-2 /
ZeRO-3, with or without CPU offload; `conf/deepspeed/*.yaml` only choose its fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "bf16")


@dataclass
class ZeroSettings:
    """What differs between the DeepSpeed set-ups; the batch/precision/clipping come from the trainer."""

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

    def __post_init__(self) -> None:
        if self.stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.stage={self.stage}: use 0, 1, 2 or 3.")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("deepspeed.offload_optimizer=true needs deepspeed.stage>=1 (ZeRO-Offload).")
        if self.offload_param and self.stage != 3:
            raise ValueError("deepspeed.offload_param=true needs deepspeed.stage=3.")

    def zero_block(self) -> dict:
        """The `zero_optimization` section of the JSON."""
        block: dict = {"stage": self.stage}
        if self.stage == 0:
            return block
        block.update(
            overlap_comm=self.overlap_comm,
            contiguous_gradients=self.contiguous_gradients,
            reduce_bucket_size=self.reduce_bucket_size,
        )
        if self.stage in (1, 2):
            block.update(allgather_bucket_size=self.allgather_bucket_size, reduce_scatter=True)
        if self.stage == 3:
            block.update(
                stage3_prefetch_bucket_size=self.stage3_prefetch_bucket_size,
                stage3_param_persistence_threshold=self.stage3_param_persistence_threshold,
                stage3_max_live_parameters=self.stage3_max_live_parameters,
                stage3_max_reuse_distance=self.stage3_max_reuse_distance,
                # Lets the exporter ask for a gathered 16-bit state dict.
                stage3_gather_16bit_weights_on_model_save=True,
            )
        if self.offload_optimizer:
            block["offload_optimizer"] = {"device": "cpu", "pin_memory": self.pin_memory}
        if self.offload_param:
            block["offload_param"] = {"device": "cpu", "pin_memory": self.pin_memory}
        return block


def gradient_accumulation_steps(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """global = micro x accumulation x world; refuse sizes that do not divide (no silent rounding)."""
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise ValueError(
            f"trainer.global_batch_size={global_batch_size} is not a multiple of "
            f"trainer.micro_batch_size ({micro_batch_size}) x world size ({world_size}) = {per_step}; "
            f"pick a global batch divisible by {per_step}."
        )
    return global_batch_size // per_step


def deepspeed_config(
    zero: ZeroSettings,
    global_batch_size: int,
    micro_batch_size: int,
    world_size: int,
    precision: str,
    grad_clip: float,
) -> dict:
    """The complete DeepSpeed JSON; every value explicit."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: use one of {PRECISIONS}.")
    if grad_clip <= 0:
        raise ValueError(f"trainer.grad_clip={grad_clip}: must be > 0 (clipping is on in every stage).")
    config = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(
            global_batch_size, micro_batch_size, world_size
        ),
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero.zero_block(),
        # We log ourselves; DeepSpeed's own console print would only duplicate it.
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
    if zero.offload_optimizer:
        # The recipe builds its own optimizer (for the param groups); with offload DeepSpeed would
        # otherwise insist on its own CPU Adam. `optimizer=cpu_adam` picks that faster class.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def write_deepspeed_config(config: dict, run_dir: Path) -> Path:
    """Save the JSON DeepSpeed received next to the run's other records."""
    path = Path(run_dir) / "deepspeed_config.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
