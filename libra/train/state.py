"""`TrainState`: everything besides the DeepSpeed engine that a resumed run needs (after lingua).

Model weights, optimizer and scheduler live in the DeepSpeed checkpoint; this object holds the rest:
the step counters, where each data stream stands, every random generator, and the W&B run id (so a
resumed run keeps appending to the same dashboard run). It is saved once per rank, because each rank
has its own RNG streams and its own share of the data.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """Snapshot of every generator the training step may draw from."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
