"""Resumable checkpoints: DeepSpeed engine state + one `TrainState` per rank, written atomically.

Layout of a run directory::

    <run_dir>/checkpoints/step_000200/       DeepSpeed files (module, optimizer shards, scheduler)
                                             + train_state_rank{r}.pt for every rank
    <run_dir>/checkpoints/step_000200.tmp/   only while being written

Every rank writes into the `.tmp` folder; once all have finished, rank 0 renames it. A crash while
saving therefore leaves only a `.tmp` folder, which `latest_checkpoint` ignores and the next save
removes, never a half-written `step_*` folder that a resume would trust. The directory is assumed to
be shared by all ranks (one filesystem), as DeepSpeed itself assumes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from .state import TrainState

STEP_DIR = re.compile(r"^step_(\d+)$")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (`.tmp` folders are not complete)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(engine, state: TrainState, run_dir: str | Path, keep_last: int) -> Path:
    """Write engine + train state for `state.step`, then prune to the newest `keep_last` (all ranks call)."""
    root = checkpoint_root(run_dir)
    final = root / step_name(state.step)
    tmp = root / f"{final.name}.tmp"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash during an earlier save
    _barrier()
    # DeepSpeed writes <save_dir>/<tag>/...; `save_latest=False`: we find the newest ourselves, and a
    # `latest` file would point at the temporary name.
    engine.save_checkpoint(str(root), tag=tmp.name, save_latest=False)
    torch.save(state.state_dict(), tmp / f"train_state_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        if final.exists():  # the same step saved twice (e.g. on demand, then on schedule)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(engine, state: TrainState, checkpoint: str | Path) -> None:
    """Restore engine (weights, optimizer, scheduler) and this rank's train state (incl. RNG)."""
    checkpoint = Path(checkpoint)
    state_file = checkpoint / f"train_state_rank{_rank()}.pt"
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{state_file} is missing: the checkpoint was written with a different number of ranks "
            f"or is incomplete; resume with the same world size."
        )
    load_path, _ = engine.load_checkpoint(
        str(checkpoint.parent), tag=checkpoint.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {checkpoint}")
    # weights_only=False: the state holds numpy RNG tuples; the file is our own, not downloaded.
    state.load_state_dict(torch.load(state_file, weights_only=False))


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """`resume`: null -> fresh start; "auto" -> newest checkpoint of this run dir if any;
    a run dir -> its newest checkpoint; a `step_*` folder -> that one."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if STEP_DIR.match(path.name) and path.is_dir():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"resume={resume}: no complete checkpoint under {checkpoint_root(path)}; "
            f"use resume=auto to start fresh when none exists."
        )
    return found
