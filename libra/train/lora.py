"""How the recipe finetunes the model (`conf/finetune`): every weight the stage trains (`full`), or
LoRA adapters (`lora`, Hu et al. 2021, built with peft) on a frozen base.

LoRA adapts two kinds of layers:

* the language model's `nn.Linear` layers (q/k/v/o, gate/up/down): peft's own LoRA layer,
  W x + s·b(a(dropout x)) with s = alpha / rank;
* the routed visual expert's projections, which are already factorised (`LibraLinear`, y = B(A x),
  docs/design.md §2.1). An adapter on the product BA would raise its rank, and the merge could not be
  written back into the checkpoint's `weight_A` / `weight_B`. So each factor gets its own adapter:
  the layer is rebuilt as two `nn.Linear` (`FactorisedLinear`), peft adapts both, and the merge gives
  A' = A + s·b_A a_A and B' = B + s·b_B a_B, of the checkpoint's own shapes.

The frozen base may be held in bf16 (`base_dtype`) while the adapters are fp32 parameters. Checkpoints
hold the trainable (adapter) tensors only, with the settings and a checksum of the base in their
manifest; a resume re-reads the base from `model.init_from` and refuses one that differs. The export
merges the adapters into an ordinary checkpoint (the official parameter names, fp32), which every task
loads as it loads a full finetune's.
"""

from __future__ import annotations

import copy
import math
from typing import Protocol

import torch
from torch import nn

from libra import distributed
from libra.model.modeling import LibraLinear
from libra.validation import raise_problems, value_problems

from .models import DTYPES

ADAPTER = "default"  # peft's name of the one adapter set
# The factors of a FactorisedLinear and the names the checkpoint gives them.
FACTOR_NAMES = {"factor_A.weight": "weight_A", "factor_B.weight": "weight_B"}


class Finetune(Protocol):
    """What the recipe asks of a finetuning mode (one of the two classes below)."""

    adapters_only: bool  # checkpoints hold only the trainable tensors; the rest comes from the base

    def prepare(self, model: nn.Module) -> nn.Module: ...

    def record(self) -> dict: ...

    def export_state(
        self, model: nn.Module, state: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, torch.Tensor]]: ...


class FullFinetune:
    """Every weight the stage trains is updated in place (`trainer.freeze_language` picks stage 1)."""

    adapters_only = False  # checkpoints hold the whole model

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def record(self) -> dict:
        """What a checkpoint's manifest notes about the finetuning, compared on resume."""
        return {"mode": "full"}

    def export_state(
        self, model: nn.Module, state: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """(the model whose `save_pretrained` writes the export, the weights it writes)."""
        return model, state


FULL = FullFinetune()


class FactorisedLinear(nn.Module):
    """A `LibraLinear` (y = B(A x)) whose two factors are `nn.Linear` children sharing its parameters,
    so that peft's LoRA layer can adapt each factor (the model runs it through its own forward)."""

    def __init__(self, layer: LibraLinear):
        super().__init__()
        rank, in_features = layer.weight_A.shape
        self.factor_A = nn.Linear(in_features, rank, bias=False, device="meta")
        self.factor_A.weight = layer.weight_A
        self.factor_B = nn.Linear(rank, layer.weight_B.shape[0], bias=False, device="meta")
        self.factor_B.weight = layer.weight_B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor_B(self.factor_A(x))


class LoraFinetune:
    """LoRA adapters on a frozen base; only the adapters train (conf/finetune/lora.yaml)."""

    adapters_only = True

    def __init__(
        self,
        rank: int,
        alpha: float,
        dropout: float,
        target_modules: list[str],
        base_dtype: str = "float32",
    ):
        settings = {
            "rank": rank,
            "alpha": alpha,
            "dropout": dropout,
            "target_modules": list(target_modules),  # a ListConfig when instantiated by Hydra
            "base_dtype": base_dtype,
        }
        # the ranges and choices (the modules LoRA can adapt included) are libra/validation.py's,
        # which also checks them before launch
        raise_problems(
            [p for key, value in settings.items() for p in value_problems(f"finetune.{key}", value)]
        )
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.target_modules = list(target_modules)
        self.base_dtype = base_dtype
        self.base_checksum: float | None = None  # of the frozen base, set by prepare()

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze `model` in `base_dtype`, add fp32 adapters in place; returns the same model object."""
        from peft import LoraConfig, inject_adapter_in_model

        model.to(DTYPES[self.base_dtype])
        model.requires_grad_(False)
        self.base_checksum = base_checksum(model)  # before any layer is rebuilt: the checkpoint's names
        peft_targets = []
        for name, module in list(model.named_modules()):
            leaf = name.rpartition(".")[2]
            if leaf not in self.target_modules:
                continue
            if isinstance(module, LibraLinear):
                parent = model.get_submodule(name.rpartition(".")[0])
                setattr(parent, leaf, FactorisedLinear(module))
                peft_targets += [f"{name}.factor_A", f"{name}.factor_B"]
            elif isinstance(module, nn.Linear):
                peft_targets.append(name)
        if not peft_targets:
            raise ValueError(f"finetune.target_modules={self.target_modules}: no such layer in this model")
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=peft_targets,  # full names: exactly these layers, nothing matched by suffix
            bias="none",
        )
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        for name, param in model.named_parameters():
            is_adapter = ".lora_" in name
            param.requires_grad_(is_adapter)
            if is_adapter:  # peft made them in the base's dtype; they learn in fp32 (small tensors)
                param.data = param.data.float()
        if distributed.is_main():
            trainable, total = count_parameters(model)
            print(
                f"[libra] finetune=lora: {trainable:,} adapter parameters train ({trainable / total:.2%} of "
                f"{total:,}); the base is frozen in {self.base_dtype}",
                flush=True,
            )
        return model

    def record(self) -> dict:
        return {
            "mode": "lora",
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": sorted(self.target_modules),
            "base_dtype": self.base_dtype,
            "base_checksum": self.base_checksum,
        }

    def export_state(
        self, model: nn.Module, state: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The merged fp32 weights, written through a weightless plain model of the same config (its
        config.json then says float32, and no peft layer is involved in the save)."""
        config = copy.deepcopy(model.config)  # save_pretrained writes its dtype into the config
        with torch.device("meta"):
            plain = type(model)(config)
        return plain, merged_state_dict(state, self.scaling)


def base_checksum(model: nn.Module) -> float:
    """Sum of |w| over every weight in float64: the same base gives the same number (up to rounding
    of the order of 1e-12), another base almost surely a different one. Needs unpartitioned weights."""
    return float(sum(p.detach().double().abs().sum().item() for p in model.parameters()))


def resume_problems(saved: dict, current: dict) -> list[str]:
    """Why a checkpoint written with finetuning `saved` (`record()`) cannot continue as `current`;
    empty when it can."""
    was, now = saved.get("mode"), current.get("mode")
    if was != now:
        return [f"it was written with finetune={was}, this run has finetune={now}: resume with that"]
    problems = []
    for key in sorted((set(saved) | set(current)) - {"mode", "base_checksum"}):
        if saved.get(key) != current.get(key):
            problems.append(
                f"finetune.{key} is {current.get(key)!r}, the checkpoint's adapters have {saved.get(key)!r}; "
                f"resume with finetune.{key}={saved.get(key)}"
            )
    a, b = saved.get("base_checksum"), current.get("base_checksum")
    if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-9)):
        problems.append(
            f"the frozen base differs from the one the adapters were trained on (checksum of its weights "
            f"{b!r}, the checkpoint's {a!r}); model.init_from must name that base"
        )
    return problems


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The state dict of a LoRA model → the plain model's, with every adapter merged (fp32).

    Works on names alone, so it serves a ZeRO-3 gathered state dict as well as a module's:
    ``<layer>.base_layer.weight`` + s·``lora_B`` @ ``lora_A`` → ``<layer>.weight``, then the factors
    of a FactorisedLinear back to ``weight_A`` / ``weight_B``."""
    a_suffix, b_suffix = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((a_suffix, b_suffix)):
            continue
        if key.endswith(".base_layer.weight"):
            layer = key.removesuffix(".base_layer.weight")
            lora_a, lora_b = state[layer + a_suffix].float(), state[layer + b_suffix].float()
            merged[f"{layer}.weight"] = value.float() + scaling * (lora_b @ lora_a)
        else:
            merged[key] = value.float()
    renamed = {}
    for key, value in merged.items():
        for factor, official in FACTOR_NAMES.items():
            if key.endswith("." + factor):
                key = key.removesuffix(factor) + official
        renamed[key] = value
    return renamed


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts; tied tensors counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())
