"""`TrainState`: everything besides the DeepSpeed engine that a resumed run needs (after lingua).

Model weights, optimizer and scheduler live in the DeepSpeed checkpoint; this object holds the rest:
the step counters, where each data stream stands, every random generator, and the W&B run id (so a
resumed run keeps appending to the same dashboard run). It is saved once per rank, because each rank
has its own RNG streams and its own share of the data.

The saved form holds only tensors and plain Python values (the numpy generator's key as a tensor),
so it loads with ``torch.load(weights_only=True)``: a train-state file runs no code when read.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """Snapshot of every generator the training step may draw from."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))  # restricted unpickling may give lists
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Resumable progress of one rank. `step` counts optimizer steps (not micro-batches)."""

    step: int = 0
    samples_seen: int = 0  # by this rank
    tokens_seen: int = 0  # non-padding positions, by this rank
    data: dict[str, Any] = field(default_factory=dict)  # position of this rank's data stream
    rng: dict[str, Any] = field(default_factory=dict)  # filled by capture_rng() at save time
    wandb_run_id: str | None = None
    bad_steps: int = 0  # steps not applied because their loss or gradient norm was not finite
    bad_streak: int = 0  # of those, how many in a row up to this step (0: the last step was applied)

    def state_dict(self) -> dict[str, Any]:
        self.rng = capture_rng()
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if not hasattr(self, key):
                raise KeyError(
                    f"TrainState: unknown key {key!r} in a checkpoint (written by another version?)"
                )
            setattr(self, key, value)
        if self.rng:
            restore_rng(self.rng)
