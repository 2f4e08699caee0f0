"""AdamW parameter groups and learning-rate schedules of the training recipe (docs/design.md §7.1, §7.2).

Two departures from the official trainer, both on purpose (docs/design.md B22):

* no weight decay on norms, biases and embedding tables (the official fallback decays embeddings and
  the unused `vision_hidden_placeholder`);
* `llm_lr_scale` really scales the learning rate of the language half. The official `lr_scale`
  method is commented out, so `llm_lr_scale: 1.0` in its instruction config had no effect either way.

The language half is every parameter without "vision" in its name: the same rule the official code
uses to freeze the language model in stage 1 (`frozen_language`), so the two options agree on what
"language" means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

# Parameters whose names contain one of these never get weight decay: shrinking a norm scale or an
# embedding row towards zero is not regularisation, it only fights the signal (docs/design.md B22).
NO_DECAY_NAME_PARTS = ("norm", "bias", "embed_tokens", "embedding", "placeholder")


def is_language_parameter(name: str) -> bool:
    """True for the LLaMA half of Libra (the part stage 1 freezes)."""
    return "vision" not in name


def is_decayed_parameter(name: str, param: torch.Tensor) -> bool:
    """Weight decay only on matrices of linear layers (1-D tensors are norms or biases)."""
    if param.ndim < 2:
        return False
    return not any(part in name for part in NO_DECAY_NAME_PARTS)


def freeze_language(model: nn.Module) -> int:
    """Stage 1: freeze every language parameter; returns how many tensors were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if is_language_parameter(name):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    llm_lr_scale: float = 1.0,
) -> list[dict]:
    """Split the trainable parameters into (language | vision) x (decay | no decay) AdamW groups.

    Each group carries its own `lr`, so a schedule that multiplies the initial lr (LambdaLR) keeps the
    language/vision ratio at every step. Empty groups are dropped (stage 1 has no language groups).
    """
    groups: dict[tuple[bool, bool], dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        language = is_language_parameter(name)
        decay = is_decayed_parameter(name, param)
        key = (language, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr * (llm_lr_scale if language else 1.0),
                "weight_decay": weight_decay if decay else 0.0,
                "group_name": f"{'language' if language else 'vision'}_{'decay' if decay else 'no_decay'}",
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    if not groups:
        raise ValueError("param_groups: the model has no trainable parameters (everything is frozen).")
    return [groups[k] for k in sorted(groups)]


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
    llm_lr_scale: float = 1.0,
    optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups(model)`. `optimizer_class` may be DeepSpeed's CPU Adam for offload runs."""
    groups = param_groups(model.named_parameters(), lr, weight_decay, llm_lr_scale)
    # The optimizers only accept known keys plus arbitrary extras; "names" would be carried into the
    # state dict harmlessly, but DeepSpeed's CPU Adam rejects non-tensor lists, so keep names out.
    for group in groups:
        group.pop("names")
    return optimizer_class(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def warmup_steps_for(total_steps: int, warmup_steps: int | None, warmup_ratio: float) -> int:
    """Warm-up length: an explicit step count wins over a ratio of the run (official: ratio 0.05)."""
    if warmup_steps is not None:
        return int(warmup_steps)
    return int(math.ceil(warmup_ratio * total_steps))


def warmup_note(total_steps: int, warmup_steps: int | None) -> str | None:
    """What to tell a run whose explicit warm-up outlasts it (a shortened run of an experiment): its
    learning rate never reaches optimizer.lr, and a cosine schedule never decays."""
    if warmup_steps is None or warmup_steps <= total_steps:
        return None
    return (
        f"note: scheduler.warmup_steps={warmup_steps} is longer than trainer.max_steps={total_steps}: the "
        f"learning rate ends at {total_steps / warmup_steps:.0%} of optimizer.lr and never decays "
        f"(scheduler.warmup_steps=null warms up for scheduler.warmup_ratio of the run)"
    )


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.05,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0, then cosine decay to `min_lr_ratio` x the peak lr at `total_steps`."""
    warmup = warmup_steps_for(total_steps, warmup_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0, then the peak lr until the end."""
    warmup = warmup_steps_for(total_steps, warmup_steps, warmup_ratio)

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


ScheduleFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
