"""A step whose loss or gradient norm is not finite changes nothing: its update is refused and counted.

DeepSpeed applies the update inside ``engine.step()`` at the accumulation boundary by calling
``step()`` of the optimizer we built (ZeRO and the bf16 optimizer wrap it and call it on their fp32
partitions). ``UpdateGate`` wraps that one ``step()``. Before ``engine.step()`` at the boundary the
recipe arms it with the step's loss verdict (all-reduced with the step's other numbers, so every
rank has the same) and, in stage 0 fp32, the gradient norm it measured (DeepSpeed does not keep
one there); elsewhere the gate reads the global norm DeepSpeed has just computed for clipping. The
update goes through only when both are finite. A refused update leaves the weights and the
optimizer moments as they were, and the gate raises DeepSpeed's own ``overflow`` flag, so DeepSpeed
treats the step as it treats an fp16 overflow: counted in ``engine.skipped_steps``, gradients
dropped, learning-rate schedule not advanced. (ZeRO in fp32, ZeRO-3 and the bf16 optimizer already
skip a non-finite norm by themselves; then the gate is never reached and the outcome is the same.)

The recipe still advances ``TrainState.step`` on a refused step (its batches are consumed, not
replayed), counts it in ``bad_steps`` / ``bad_streak``, logs its loss parts as they were (NaN stays
NaN), and stops after ``trainer.max_bad_steps`` refused steps in a row (``exit_codes.NON_FINITE``).
Cost: the loss verdict is one host read per optimizer step, none per micro-step.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from libra import distributed


class UpdateGate:
    """Wraps ``optimizer.step`` so that an armed step applies its update only if it is finite."""

    def __init__(self, engine, optimizer: torch.optim.Optimizer) -> None:
        self.engine = engine
        self._step = optimizer.step

        def step(*args, **kwargs):  # the instance attribute DeepSpeed's wrappers call
            return self._gated_step(*args, **kwargs)

        # the LR scheduler wrapped step() first and warns about a step() it did not wrap
        step._wrapped_by_lr_sched = getattr(self._step, "_wrapped_by_lr_sched", False)
        optimizer.step = step
        self._armed = False
        self._loss_finite = True
        self._norm: float | None = None
        self.applied = False
        self.grad_norm = math.nan  # of the last boundary, before clipping

    def arm(self, loss_finite: bool, grad_norm: float | None) -> None:
        """At the accumulation boundary, before ``engine.step()``; `grad_norm` where DeepSpeed keeps none."""
        self._armed, self._loss_finite, self._norm = True, loss_finite, grad_norm
        self.applied, self.grad_norm = False, math.nan

    def disarm(self) -> bool:
        """After ``engine.step()``: whether the update was applied."""
        self._armed = False
        if not self.applied and math.isnan(self.grad_norm):  # DeepSpeed skipped it before the gate
            self.grad_norm = _deepspeed_norm(self.engine)
        return self.applied

    def _gated_step(self, *args, **kwargs):
        if not self._armed:  # DeepSpeed's own calls outside a training step (state set-up)
            return self._step(*args, **kwargs)
        norm = self._norm if self._norm is not None else _deepspeed_norm(self.engine)
        self.grad_norm = norm
        if self._loss_finite and math.isfinite(norm) and norm >= 0:  # DeepSpeed reports inf/nan as -1
            self.applied = True
            self.engine.optimizer.overflow = False
            return self._step(*args, **kwargs)
        self.engine.optimizer.overflow = True  # DeepSpeed: skipped step, no scheduler step
        return None


def _deepspeed_norm(engine) -> float:
    """The global gradient norm DeepSpeed computed this step (inf after its own skip; nan if none)."""
    norm = getattr(engine.optimizer, "_global_grad_norm", None)
    if norm is None:
        return math.nan
    return float(norm.item() if torch.is_tensor(norm) else norm)


def weights_finite(engine) -> bool:
    """Every parameter finite (each rank checks its copy, or its shard under ZeRO-3); same answer on
    every rank. Checked before anything is written: no checkpoint or export holds a NaN."""
    device = engine.device
    flags = [torch.isfinite(getattr(p, "ds_tensor", p)).all().to(device) for p in engine.module.parameters()]
    ok = torch.stack(flags).all().float().reshape(1) if flags else torch.ones(1, device=device)
    if distributed.world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


class NonFiniteWeights(RuntimeError):
    """Refusal to write a checkpoint or export whose weights are not all finite."""
