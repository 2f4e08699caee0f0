"""The benchmark's collective steps: one item list for every rank, and gathering to rank 0.

Each rank generates predictions for its shard of the questions or images; scoring needs the whole
set (CIDEr's IDF and BLEU's totals are corpus statistics), so rank 0 collects every
``(id, prediction)`` record and scores once. What was already predicted by an earlier,
interrupted run is read by rank 0 alone and sent to the others, so that every rank shards the same
list of missing items: ranks reading the partial files themselves would each see a different state
of them (the other ranks are already appending) and shard different lists. Imports torch; kept apart
from the pure metric modules. Rank and world size come from ``libra.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch.distributed as dist

from libra import distributed

Item = TypeVar("Item")
T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    return distributed.rank(), distributed.world_size()


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """Every ``world_size``-th item starting at ``rank``: shards differ by at most one item and
    together hold each item exactly once."""
    return list(items[rank::world_size])


def _in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def computed_on_rank0(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 only, its (picklable) result handed to every rank. Collective:
    every rank must call it, in the same order."""
    if not _in_process_group():
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_rank0(records: list[Any]) -> list[Any] | None:
    """All ranks' records (in rank order) on rank 0; ``None`` on the other ranks. Collective.

    Records must be picklable tuples whose first element is the item id. Uses
    ``gather_object``, which works with the gloo and nccl backends alike.
    """
    if not _in_process_group():
        return list(records)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    gathered: list[list[Any]] | None = [None] * world_size if rank == 0 else None  # type: ignore[list-item]
    dist.gather_object(records, gathered, dst=0)
    if rank != 0:
        return None
    return [record for part in gathered for record in part]


def check_unique_ids(records: Sequence[tuple], what: str) -> None:
    """Rank 0's guard after gathering: every id once (a sharding bug would double-count)."""
    seen, duplicates = set(), set()
    for record in records:
        (duplicates if record[0] in seen else seen).add(record[0])
    if duplicates:
        raise RuntimeError(f"{what}: ids gathered more than once: {sorted(duplicates, key=str)[:20]}")
