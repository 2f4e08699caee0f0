"""Resumable checkpoints: DeepSpeed engine state + one `TrainState` per rank, complete or ignored.

Layout of a run directory::

    <run_dir>/checkpoints/step_000200/       DeepSpeed files (module, optimizer shards, scheduler)
                                             + train_state_rank{r}.pt for every rank
                                             + manifest.json (every file and its size), written last
    <run_dir>/checkpoints/step_000200.tmp/   only while being written
    <run_dir>/checkpoints/step_000200.old/   only while step_000200 is being replaced

Saving: every rank writes into the `.tmp` folder and fsyncs it; after a barrier rank 0 writes the
manifest and renames the folder into place. Saving a step that exists already (on demand, then on
schedule; the final save of a resumed, finished run) sets the old copy aside until the new one is
in (``libra.durable_files.replace_folder``). A folder is a checkpoint only when its manifest matches
its files, so a kill at any moment leaves the newest complete checkpoint findable, and
``resume=auto`` says which folders it passed over and why. No checkpoint is written whose weights
are not all finite. A ``finetune=lora`` run saves only the trainable tensors (the adapters and their
optimizer state; libra/train/lora.py) and notes its settings and a checksum of its base in the
manifest; resuming it re-reads the base from ``model.init_from`` and refuses another base or other
adapter settings before loading anything.

Loading runs no code from the folder: the train state is read with ``weights_only=True``, and
DeepSpeed's own reads (``torch.load(weights_only=False)`` inside ``engine.load_checkpoint``) are
restricted the same way with ``libra.safe_load.safe_unpickling``, allowing only the three plain-data
classes DeepSpeed's optimizer files name (``deepspeed_safe_globals``). Restricting DeepSpeed's own
loader, rather than checking each file before handing it over, reads every file once and covers
whatever file DeepSpeed decides to open.

Pruning keeps the newest `keep_last` checkpoints and, in any case, the newest *good* one: written
after an applied step, not inside a streak of refused non-finite steps (``guard.py``).
The directory is assumed to be shared by all ranks (one filesystem), as DeepSpeed itself assumes.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from libra import distributed
from libra.durable_files import (
    OLD_SUFFIX,
    TMP_SUFFIX,
    IncompleteFolder,
    fsync_tree,
    read_manifest,
    replace_folder,
    write_manifest,
)
from libra.safe_load import safe_torch_load, safe_unpickling

from .guard import NonFiniteWeights, weights_finite
from .lora import FULL, Finetune, resume_problems
from .state import TrainState

__all__ = [
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_resume",
    "safe_torch_load",  # re-exported: the loader for every .pt of a checkpoint folder
    "save_checkpoint",
    "verify_checkpoint_files",
]

STEP_DIR = re.compile(r"^step_(\d+)$")
_ANY_STEP_DIR = re.compile(r"^step_(\d+)(\.tmp|\.old)?$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def deepspeed_safe_globals() -> list[Any]:
    """The classes DeepSpeed's checkpoint files name besides tensors and containers: an int enum, a
    two-int record and the loss scaler's attribute holder. Constructing them runs no file-chosen code."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler]


def scan_checkpoints(run_dir: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(complete checkpoints oldest first, [(folder, why it is not one)]).

    ``step_N.old`` stands in for ``step_N`` while that is being replaced (a kill between the two
    renames); ``.tmp`` folders never count."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return [], []
    by_step: dict[int, dict[str, Path]] = {}
    for path in root.iterdir():
        if path.is_dir() and (m := _ANY_STEP_DIR.match(path.name)):
            by_step.setdefault(int(m.group(1)), {})[m.group(2) or ""] = path
    complete, skipped = [], []
    for step in sorted(by_step):
        found = by_step[step]
        if TMP_SUFFIX in found:
            skipped.append((found[TMP_SUFFIX], "never finished writing (a save was interrupted)"))
        chosen = None
        for suffix in ("", OLD_SUFFIX):
            if suffix not in found:
                continue
            if chosen is not None:
                skipped.append((found[suffix], f"superseded by {chosen.name} (an interrupted replacement)"))
                continue
            try:
                read_manifest(found[suffix])
            except IncompleteFolder as err:
                skipped.append((found[suffix], str(err)))
                continue
            chosen = found[suffix]
            complete.append(chosen)
    return complete, skipped


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return scan_checkpoints(run_dir)[0]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def is_good(checkpoint: Path) -> bool:
    """Written after an applied step (not inside a streak of refused non-finite steps)."""
    return read_manifest(checkpoint).get("bad_streak", 0) == 0


def newest_good_checkpoint(run_dir: str | Path) -> Path | None:
    good = [c for c in list_checkpoints(run_dir) if is_good(c)]
    return good[-1] if good else None


def save_checkpoint(
    engine, state: TrainState, run_dir: str | Path, keep_last: int, finetune: Finetune = FULL
) -> Path:
    """Write engine + train state for `state.step`, then prune (every rank calls). A LoRA run
    (`finetune.adapters_only`) writes the trainable tensors only."""
    if not weights_finite(engine):
        raise NonFiniteWeights(f"refusing to write checkpoint step {state.step}: some weights are not finite")
    root = checkpoint_root(run_dir)
    final = root / step_name(state.step)
    tmp = root / f"{final.name}{TMP_SUFFIX}"
    if distributed.is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash during an earlier save
    distributed.barrier()
    # DeepSpeed writes <save_dir>/<tag>/...; `save_latest=False`: we find the newest ourselves, and a
    # `latest` file would point at the temporary name.
    engine.save_checkpoint(
        str(root), tag=tmp.name, save_latest=False, exclude_frozen_parameters=finetune.adapters_only
    )
    torch.save(state.state_dict(), tmp / f"train_state_rank{distributed.rank()}.pt")
    fsync_tree(tmp)  # each rank flushes what it wrote (fsync of another node's file is a no-op)
    distributed.barrier()
    if distributed.is_main():
        write_manifest(
            tmp,
            step=state.step,
            world_size=distributed.world_size(),
            zero_stage=engine.zero_optimization_stage(),  # compared on resume (_set_up_problems)
            precision=_precision(engine),
            optimizer=_optimizer_settings(engine),
            bad_streak=state.bad_streak,
            adapters_only=finetune.adapters_only,  # read by libra/pretrained.py: not a model on its own
            finetune=finetune.record(),
        )
        replace_folder(tmp, final)
        prune(run_dir, keep_last)
    distributed.barrier()
    return final


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints (all when <= 0) plus the newest good one;
    remove them and the leftovers of interrupted saves. Rank 0 only."""
    complete, skipped = scan_checkpoints(run_dir)
    keep = set(complete if keep_last <= 0 else complete[-keep_last:])
    good = [c for c in complete if is_good(c)]
    if good:
        keep.add(good[-1])
    for folder in complete:
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.name.endswith(OLD_SUFFIX):  # the only copy of its step: back under its name
            folder.rename(folder.with_name(folder.name.removesuffix(OLD_SUFFIX)))
    for folder, _ in skipped:  # our own leftovers only: a bare step_N without manifest is left alone
        if folder.name.endswith(TMP_SUFFIX) or folder.name.endswith(OLD_SUFFIX):
            shutil.rmtree(folder, ignore_errors=True)


def _precision(engine) -> str:
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def _optimizer_settings(engine) -> list[dict]:
    """Per parameter group: its peak lr (the schedule scales the lr from it) and AdamW's settings."""
    return [
        {
            "lr": group.get("initial_lr", group["lr"]),
            "weight_decay": group["weight_decay"],
            "betas": list(group["betas"]),
            "eps": group["eps"],
        }
        for group in engine.optimizer.param_groups
    ]


# the optimizer keys a parameter group's settings come from (group 0 is a vision group: the base lr)
_OPTIMIZER_KEYS = {
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "betas": "optimizer.betas",
    "eps": "optimizer.eps",
}


def _optimizer_problems(manifest: dict, engine) -> list[str]:
    """Loading a checkpoint restores the optimizer it saved, settings included: another lr, weight
    decay or betas in this run's config would be silently overridden by the saved ones."""
    problems = []
    saved_precision = manifest.get("precision")  # both are absent in older checkpoints
    if saved_precision is not None and saved_precision != _precision(engine):
        problems.append(
            f"it was written with trainer.precision={saved_precision} and this run has {_precision(engine)}; "
            f"resume with trainer.precision={saved_precision}"
        )
    saved, here = manifest.get("optimizer"), _optimizer_settings(engine)
    if saved is not None and len(saved) != len(here):  # the groups follow what trains
        problems.append(
            f"its optimizer has {len(saved)} parameter groups and this run's {len(here)}: another set of "
            "parameters trains; resume with the trainer.freeze_language and finetune settings it was "
            "written with"
        )
    if saved is None or problems or saved == here:
        return problems
    differ = []
    for field, key in _OPTIMIZER_KEYS.items():
        pair = next(((a[field], b[field]) for a, b in zip(saved, here) if a[field] != b[field]), None)
        if pair is not None:
            differ.append(f"{key}: {pair[0]} there, {pair[1]} here")
    problems.append(
        f"its optimizer state holds other settings ({'; '.join(differ)}; optimizer.llm_lr_scale scales the "
        "language groups' lr), which loading it would put back over this run's; resume with them"
    )
    return problems


def _set_up_problems(manifest: dict, engine, checkpoint: Path) -> list[str]:
    """Why the run that wrote `manifest` and this one cannot share a checkpoint; empty when they can.

    Each rank's data position is its share of the rank-split order, and ZeRO shards the optimizer
    by rank and stage: another world size would skip or repeat samples, another stage fails deep in
    DeepSpeed (a missing or unexpected optimizer file), as another precision or trainable set does."""
    problems = []
    saved_world_size = manifest.get("world_size")
    if saved_world_size is not None and saved_world_size != distributed.world_size():
        problems.append(
            f"it was written by {saved_world_size} rank(s) and this job has {distributed.world_size()}; "
            f"resume with the same world size (cluster.nodes x cluster.gpus_per_node = {saved_world_size})"
        )
    saved_stage = manifest.get("zero_stage")  # absent in checkpoints of older versions
    if saved_stage is not None and saved_stage != engine.zero_optimization_stage():
        problems.append(
            f"it was written with ZeRO stage {saved_stage} and this run has deepspeed.stage="
            f"{engine.zero_optimization_stage()}; resume with a deepspeed= choice of stage {saved_stage}"
        )
    problems += _optimizer_problems(manifest, engine)
    if problems:
        problems.append(
            "or start a new run from its weights with model=from_pretrained tokenizer=from_pretrained "
            f"model.init_from={checkpoint}"
        )
    return problems + _model_shape_problems(engine, checkpoint)


# LibraConfig fields that set the shape of some weight: resuming across them cannot load
SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vision_down_ratio",
    "vision_vocab_size",
    "vision_codebook_num",
    "contiguous_signal_size",
    "use_bridge",
    "bridge_rank",
)


def _model_shape_problems(engine, checkpoint: Path) -> list[str]:
    """The model settings in which this run's model and the one that wrote `checkpoint` differ, read
    from the config.json its run saved: DeepSpeed's own load would end in a traceback of size
    mismatches that names no setting."""
    from libra.pretrained import model_files_for

    config = getattr(engine.module, "config", None)
    try:
        saved = json.loads((model_files_for(checkpoint) / "config.json").read_text())
    except (FileNotFoundError, ValueError):  # no model files to compare with (a hand-made folder)
        return []
    differ = [k for k in SHAPE_KEYS if k in saved and getattr(config, k, saved[k]) != saved[k]]
    if not differ:
        return []
    settings = ", ".join(f"{k}={saved[k]} there, {getattr(config, k)} here" for k in differ)
    fix = " ".join(f"model.{k}={saved[k]}" for k in differ)
    return [
        f"it holds a model of another shape ({settings}); resume with the settings it was written with: {fix}"
    ]


def load_checkpoint(engine, state: TrainState, checkpoint: str | Path, finetune: Finetune = FULL) -> None:
    """Restore engine (weights, optimizer, scheduler) and this rank's train state (incl. RNG). A LoRA
    checkpoint restores the adapters over the base the model was built with, which must be its own."""
    checkpoint = Path(checkpoint)
    try:
        manifest = read_manifest(checkpoint)
    except IncompleteFolder as err:
        raise FileNotFoundError(f"cannot resume from {checkpoint}: {err}") from None
    problems = resume_problems(manifest.get("finetune", FULL.record()), finetune.record())  # older: full
    problems += _set_up_problems(manifest, engine, checkpoint)
    if problems:
        raise ValueError(f"cannot resume from {checkpoint}: " + "; ".join(problems))
    state_file = checkpoint / f"train_state_rank{distributed.rank()}.pt"
    saved_state = safe_torch_load(state_file)
    with safe_unpickling(deepspeed_safe_globals()):
        load_path, _ = engine.load_checkpoint(
            str(checkpoint.parent),
            tag=checkpoint.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            # the frozen base is not in an adapters-only checkpoint (its settings were compared above)
            load_module_strict=not finetune.adapters_only,
        )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {checkpoint}")
    state.load_state_dict(saved_state)  # last: restores the RNG streams


def verify_checkpoint_files(step_dir: str | Path) -> None:
    """Raise unless `step_dir` is complete (its manifest matches) and every ``.pt`` in it loads with
    the restricted unpickler, before a tool that unpickles them itself (``zero_to_fp32``) reads them."""
    step_dir = Path(step_dir)
    try:
        read_manifest(step_dir)
    except IncompleteFolder as err:
        raise FileNotFoundError(str(err)) from None
    allow = deepspeed_safe_globals()
    for path in sorted(step_dir.glob("*.pt")):
        safe_torch_load(path, allow=allow, mmap=True)


def refuse_a_fresh_run_over_checkpoints(resume: str | None, run_dir: str | Path) -> None:
    """A fresh run (resume=null) in a run dir that holds checkpoints would write its own among them,
    and pruning (which keeps the highest steps) would delete the new ones: refused before anything is
    written."""
    complete = list_checkpoints(run_dir) if resume is None else []
    if complete:
        raise ValueError(
            f"{run_dir} holds the checkpoints of an earlier run (newest: {complete[-1].name}); fix: "
            "resume=auto to continue it, or another hydra.run.dir for a new run"
        )


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """`resume`: null -> fresh start; "auto" -> newest complete checkpoint of this run dir if any;
    a run dir -> its newest complete checkpoint; a `step_*` folder -> that one. Says which folders
    it passed over and why."""
    if resume is None:
        return None
    if resume == "auto":
        return _newest(run_dir)
    path = Path(resume).expanduser()  # as checkpoint= is expanded (libra.pretrained.resolve_pretrained)
    if _ANY_STEP_DIR.match(path.name) and path.is_dir():
        return path
    found = _newest(path)
    if found is None:
        raise FileNotFoundError(
            f"resume={resume}: no complete checkpoint under {checkpoint_root(path)}; "
            f"use resume=auto to start fresh when none exists."
        )
    return found


def _newest(run_dir: str | Path) -> Path | None:
    complete, skipped = scan_checkpoints(run_dir)
    if distributed.is_main():
        for folder, reason in skipped:
            print(f"[libra] resume: skipped {folder}: {reason}", file=sys.stderr, flush=True)
    return complete[-1] if complete else None
