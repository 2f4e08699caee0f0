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

from libra.config_schema import ZeroFields
from libra.validation import batch_problems, offload_problems, raise_problems, value_problems


@dataclass
class ZeroSettings(ZeroFields):
    """What differs between the DeepSpeed set-ups; the batch/precision/clipping come from the trainer.
    The fields and their defaults are the schema's (libra/config_schema.py ``ZeroFields``), the rules
    libra/validation.py's: a bad value is refused here with the message of the pre-launch check."""

    def __post_init__(self) -> None:
        raise_problems(
            value_problems("deepspeed.stage", self.stage)
            + offload_problems(self.stage, self.offload_optimizer, self.offload_param)
        )

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
    """global = micro x accumulation x world; sizes that do not divide raise ``ConfigError`` (a
    ValueError), never round."""
    raise_problems(batch_problems(global_batch_size, micro_batch_size, world_size))
    return global_batch_size // (micro_batch_size * world_size)


def deepspeed_config(
    zero: ZeroSettings,
    global_batch_size: int,
    micro_batch_size: int,
    world_size: int,
    precision: str,
    grad_clip: float,
) -> dict:
    """The complete DeepSpeed JSON; every value explicit (bad values raise ``ConfigError``)."""
    raise_problems(
        value_problems("trainer.precision", precision) + value_problems("trainer.grad_clip", grad_clip)
    )
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
