"""Gathering benchmark items from all ranks to rank 0, which scores them.

Each rank generates predictions for its shard of the questions or images; scoring needs the whole
set (CIDEr's IDF and BLEU's totals are corpus statistics), so rank 0 collects every
``(id, prediction, references)`` record and scores once. Imports torch; kept apart from the pure
metric modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch.distributed as dist

Item = TypeVar("Item")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """Every ``world_size``-th item starting at ``rank``: shards differ by at most one item and
    together hold each item exactly once."""
    return list(items[rank::world_size])


def gather_to_rank0(records: list[Any]) -> list[Any] | None:
    """All ranks' records (in rank order) on rank 0; ``None`` on the other ranks.

    Records must be picklable (``(id, prediction, references)`` tuples are). Uses
    ``gather_object``, which works with the gloo and nccl backends alike.
    """
    rank, world_size = world()
    if world_size == 1:
        return list(records)
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
