"""The benchmark runner on two gloo processes: every item predicted once and scored, whatever the
batch size and with items that do not divide by the world size, and an interrupted two-rank run
resumed by two ranks without regenerating anything.

Rank 0 is made slow to read the earlier predictions: ranks that read the partial files themselves
would then disagree on what is left to do (rank 1 is already appending), the failure this guards
against ("no prediction for N items" / "ids gathered more than once")."""

import contextlib
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_bench import make_cfg

TASKS = {"synthetic_vqa": 7, "synthetic_caption": 5}  # items per task: odd, so shards differ in size


def _valid_records(task_dir: Path) -> list[dict]:
    records = []
    for path in sorted(task_dir.glob("predictions.rank*.jsonl")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a torn line
                records.append(json.loads(line))
    return records


def _interrupt(run_dir: Path) -> dict[str, list]:
    """What a crash leaves: each rank's first prediction, a torn second line, no merged files.
    Returns the complete run's predictions.json of every task."""
    complete = {}
    for task in TASKS:
        task_dir = run_dir / task
        complete[task] = json.loads((task_dir / "predictions.json").read_text())
        (task_dir / "predictions.json").unlink()
        (task_dir / "metrics.json").unlink()
        for path in task_dir.glob("predictions.rank*.jsonl"):
            lines = path.read_text().splitlines()
            path.write_text(lines[0] + "\n" + lines[1][:12])
    return complete


def _worker(rank, world_size, port, checkpoint, cache, run_dir, batch_size, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from libra.benchmark import runner
    from libra.benchmark.runner import evaluate

    real_read = runner._read_partial_predictions

    def slow_on_rank0(out_dir):
        if dist.get_rank() == 0:
            time.sleep(2)  # rank 1 generates and appends meanwhile, unless it waits for rank 0
        return real_read(out_dir)

    runner._read_partial_predictions = slow_on_rank0
    cfg = make_cfg(
        checkpoint,
        cache,
        run_dir,
        logger="none",
        vqa_items=TASKS["synthetic_vqa"],
        caption_items=TASKS["synthetic_caption"],
        batch_size=batch_size,
    )
    first = evaluate(cfg)
    after_first = {task: _valid_records(Path(run_dir) / task) for task in TASKS}
    dist.barrier()
    complete = _interrupt(Path(run_dir)) if rank == 0 else None
    dist.barrier()
    second = evaluate(cfg)
    out.put((rank, first, second, after_first, complete))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 2])
def test_two_ranks_predict_every_item_once_and_resume(tiny_checkpoint, tmp_path, batch_size):
    checkpoint, cache = tiny_checkpoint
    run_dir = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    args = (2, port, checkpoint, cache, run_dir, batch_size, out)
    mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method="spawn")
    results = {rank: rest for rank, *rest in (out.get(), out.get())}
    first, second, after_first, complete = results[0]
    assert results[1][:2] == [{}, {}]  # scores live on rank 0 only
    assert (
        set(first)
        == set(second)
        >= {
            "benchmark/synthetic_vqa/accuracy",
            "benchmark/synthetic_caption/CIDEr",
        }
    )

    for task, count in TASKS.items():
        # the complete run: both ranks generated, every item exactly once
        ids = [r["id"] for r in after_first[task]]
        assert len(ids) == len(set(ids)) == count
        assert all((run_dir / task / f"predictions.rank{r}.jsonl").stat().st_size for r in (0, 1))
        id_key = "question_id" if task == "synthetic_vqa" else "image_id"
        assert len({p[id_key] for p in complete[task]}) == count
        # the resumed run: the two kept predictions were not redone, the rest was, once
        resumed = _valid_records(run_dir / task)
        assert sorted(r["id"] for r in resumed) == sorted(ids)
        final = json.loads((run_dir / task / "predictions.json").read_text())
        assert [p[id_key] for p in final] == [p[id_key] for p in complete[task]]
        if batch_size == 1:  # no padding: each item's greedy answer is the same in any run
            assert final == complete[task]
    if batch_size == 1:
        assert second == pytest.approx(first)
