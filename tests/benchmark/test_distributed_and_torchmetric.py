"""Gathering to rank 0 over two gloo processes, sharding, and the torchmetrics VQA wrapper."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_corpus import SYNTHETIC, load, vqa_paths

from libra.benchmark.distributed import check_unique_ids, gather_to_rank0, shard
from libra.benchmark.files import load_vqa_annotations, load_vqa_results
from libra.benchmark.torch_metrics import VQAAccuracy


def test_shards_cover_every_item_once():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and [len(p) for p in parts] == [4, 4, 3]


def test_duplicate_ids_are_refused():
    with pytest.raises(RuntimeError, match="more than once: \\[7\\]"):
        check_unique_ids([(7, "a", []), (8, "b", []), (7, "c", [])], "vqa")


def _worker(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    items = [(i, f"pred {i}", [f"ref {i}"]) for i in range(7)]
    gathered = gather_to_rank0(shard(items, rank, world_size))
    metric = VQAAccuracy()
    mine = shard([("yes", ["yes"] * 10), ("no", ["yes"] * 10), ("two", ["2", "two"] * 5)], rank, world_size)
    metric.update([p for p, _ in mine], [a for _, a in mine])
    value = metric.compute().item()  # syncs across ranks
    if rank == 0:
        out.put((sorted(gathered), value))
    else:
        out.put((gathered, value))
    dist.destroy_process_group()


@pytest.mark.slow
def test_gather_and_metric_across_two_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, port, out), nprocs=2, join=True, start_method="spawn")
    results = [out.get(), out.get()]
    gathered = [g for g, _ in results if g is not None]
    assert gathered == [[(i, f"pred {i}", [f"ref {i}"]) for i in range(7)]]
    assert [g for g, _ in results].count(None) == 1
    # yes vs ten "yes": 1; "no": 0; "two" vs 5x"2"+5x"two": normalised on both sides -> 1
    assert all(v == pytest.approx(100 * 2 / 3) for _, v in results)


def test_vqa_metric_matches_the_official_overall():
    paths = vqa_paths(SYNTHETIC)
    annotations = load_vqa_annotations(paths["annotations"])
    predictions = load_vqa_results(paths["results"], annotations)
    metric = VQAAccuracy()
    for start in range(0, len(annotations), 100):  # batched updates sum up
        batch = annotations[start : start + 100]
        metric.update([predictions[a["question_id"]] for a in batch], [a["answers"] for a in batch])
    expected = load(SYNTHETIC / "expected" / "vqa_variants_overall.json")["official_unrounded_overall_x100"]
    assert metric.compute().item() == pytest.approx(expected, abs=1e-9)
    assert metric.compute().dtype == torch.float64
