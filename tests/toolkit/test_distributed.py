"""libra/distributed.py across two real processes (gloo on the CPU)."""

from __future__ import annotations

import os

import torch.distributed as dist
import torch.multiprocessing as mp
from launch_env import free_port

from libra import distributed


def _rank_sums(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 0 skipped two corrupt images, rank 1 one missing shard: the run skipped both kinds
        mine = {"data/skipped/corrupt_image": 2} if rank == 0 else {"data/skipped/missing_shard": 1}
        mine["data/truncated"] = rank + 1
        results[rank] = distributed.sum_counts_over_ranks(mine)
    finally:
        dist.destroy_process_group()


def test_counts_are_summed_over_ranks_with_keys_only_some_ranks_have():
    results = mp.get_context("spawn").Manager().dict()
    mp.start_processes(_rank_sums, args=(free_port(), results), nprocs=2, start_method="spawn")
    expected = {"data/skipped/corrupt_image": 2, "data/skipped/missing_shard": 1, "data/truncated": 3}
    assert dict(results) == {0: expected, 1: expected}


def test_one_process_gets_its_own_counts():
    assert distributed.sum_counts_over_ranks({"a": 1}) == {"a": 1}
