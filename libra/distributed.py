"""Rank, world size and barriers: the one place the toolkit asks who and how many it is.

Before the process group exists (launchers, loggers built early) the answer comes from the
environment a launcher sets (torchrun, SLURM via ``libra.launch``); afterwards from
``torch.distributed``. Outside any launcher: rank 0 of a world of 1, and barriers do nothing.
torch is never imported here, so ``libra.launch`` and ``libra.validation`` stay cheap.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


def _process_group():
    """``torch.distributed`` when a process group is initialised, else None."""
    if "torch" not in sys.modules:  # no process group without torch; don't pay for importing it
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """Global rank: the process group's, else ``RANK`` from the launcher, else 0."""
    group = _process_group()
    return group.get_rank() if group is not None else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of ranks: the process group's, else ``WORLD_SIZE`` from the launcher, else 1."""
    group = _process_group()
    return group.get_world_size() if group is not None else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0: the one that writes shared files and logs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; nothing to wait for outside a process group."""
    group = _process_group()
    if group is not None and group.get_world_size() > 1:
        group.barrier()


def sum_counts_over_ranks(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts summed over every rank, keys that only some ranks have included (all ranks must call):
    e.g. the data skips of each rank's share, which rank 0 logs for the run."""
    group = _process_group()
    if group is None or group.get_world_size() == 1:
        return dict(counts)
    gathered: list[Mapping[str, int] | None] = [None] * group.get_world_size()
    group.all_gather_object(gathered, dict(counts))
    total: Counter[str] = Counter()
    for part in gathered:
        total.update(part or {})
    return {key: total[key] for key in sorted(total)}


def shut_down_process_group() -> None:
    """Leave the process group once every rank is done. A rank that exits with the group still open
    can abort in the communication library's teardown (SIGABRT), failing a run that succeeded."""
    group = _process_group()
    if group is not None:
        barrier()
        group.destroy_process_group()


@contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it: for work that fills a shared cache
    (generating the synthetic set, training the tiny tokenizer), which ranks would otherwise race."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# What a one-process run without a launcher presents to DeepSpeed, which would otherwise look for MPI.
SINGLE_PROCESS_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}


def init_process_group() -> tuple[int, int]:
    """Join (or create) the default process group: nccl on GPUs, gloo on the CPU; (rank, world size).

    Reads the launcher's environment (torchrun, SLURM via libra.launch); without one it is a group of
    one on a port derived from the pid, so parallel test processes do not collide."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        for key, value in SINGLE_PROCESS_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()
