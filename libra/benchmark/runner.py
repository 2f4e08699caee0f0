"""``evaluate(cfg)``: run a checkpoint on the benchmark tasks of ``cfg.benchmark`` and score them.

    python run.py task=benchmark checkpoint=<folder> benchmark=[vqav2,coco_caption]

For each task (one ``conf/benchmark/<name>.yaml``, built with Hydra's ``instantiate``): rank 0 reads
what earlier, interrupted runs already predicted (``<run_dir>/<task>/predictions.rank<r>.jsonl``,
whatever their world size was) and sends it to every rank, so all ranks shard the same list of
missing items. Each rank generates its shard in left-padded batches and appends its predictions to
its own ``predictions.rank<r>.jsonl`` after every batch, then the ranks gather their predictions
to rank 0, which adds the earlier ones, scores with the pure metric modules and writes
``predictions.json`` (the official submission layout) and ``metrics.json`` (the CLI's keys). An item
whose image is missing or unreadable is skipped, counted (printed, and under ``skipped`` in
``metrics.json``) and scored as an empty answer. A task without answers (VQAv2 test-dev) is not
scored: ``predictions.json`` is then the file to upload to its evaluation server. Scores are logged
as ``benchmark/<task>/<metric>``, with a table of (image, prompt, prediction, references, score).

Config read: ``checkpoint`` (any kind ``libra.pretrained`` resolves: an export or official folder, a
run dir, a DeepSpeed step folder), ``run_dir``, ``benchmark`` (task name -> task config),
``trainer.precision`` (optional, fp32 | bf16), ``logger`` (for ``libra.tracking.build_logger``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from libra.benchmark.distributed import check_unique_ids, computed_on_rank0, gather_to_rank0, shard, world
from libra.benchmark.tasks import Item
from libra.data.skips import SkipCounter, Skipped
from libra.pretrained import load_pretrained

TABLE_ROWS = 32  # rows of the per-task sample table


def evaluate(cfg: DictConfig, logger=None, step: int = 0) -> dict[str, float]:
    """Score ``cfg.checkpoint`` on every task of ``cfg.benchmark``; returns
    ``{"benchmark/<task>/<metric>": value}`` on rank 0 ({} on other ranks).

    ``logger``: log into this (already open) metric logger at ``step`` and leave it open — the
    training recipe passes its own, so one job is one W&B run. Without it, a logger is built from
    ``cfg.logger`` for this call and finished at the end.
    """
    import contextlib

    from hydra.utils import instantiate

    from libra.tracking import build_logger

    tasks = {name: instantiate(task_cfg) for name, task_cfg in cfg.benchmark.items()}
    run_dir = Path(cfg.run_dir)
    precision = OmegaConf.select(cfg, "trainer.precision", default="fp32")
    model, processor = load_pretrained(cfg.checkpoint, precision=precision)  # any checkpoint kind
    results: dict[str, float] = {}
    own_logger = build_logger(cfg, run_dir) if logger is None else contextlib.nullcontext(logger)
    with own_logger as logger:
        for name, task in tasks.items():
            scores, rows = run_benchmark_task(name, task, model, processor, run_dir / name)
            if world()[0] != 0:
                continue
            logged = {f"benchmark/{name}/{k}": float(v) for k, v in scores.items()}
            logger.log(logged, step=step)
            columns = ["image", "prompt", "prediction", "references", "score"]
            logger.log_table(f"benchmark/{name}/samples", columns, rows, step=step)
            results.update(logged)
        logger.summary(results)  # the scores in the W&B run summary (rank 0 only: {} elsewhere)
    return results


# ------------------------------------------------------------------------------------- tasks


def run_benchmark_task(
    name: str, task, model, processor, out_dir: Path
) -> tuple[dict[str, float], list[list]]:
    """Generate for the missing items of this rank's shard, gather, score on rank 0.

    Returns (headline scores, table rows) on rank 0 and ({}, []) elsewhere.
    """
    rank, world_size = world()
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            f"{name}: WORLD_SIZE={world_size} but no process group; start the benchmark through run.py "
            "(it joins the group), or call libra.distributed.init_process_group() first"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    items = task.items()
    # Read once, before any rank appends: every rank must shard the same list of missing items.
    done = computed_on_rank0(lambda: _read_partial_predictions(out_dir))
    todo = [item for item in items if item.id not in done]
    mine = shard(todo, rank, world_size)
    partial = out_dir / f"predictions.rank{rank}.jsonl"
    records = []
    with partial.open("a", encoding="utf-8") as sink:
        if _torn(partial):
            sink.write("\n")  # a crash tore the last line: start a fresh one rather than extend it
        for start in range(0, len(mine), task.batch_size):
            batch = mine[start : start + task.batch_size]
            for item, out in zip(batch, _generate(task, model, processor, batch)):
                record = {"id": item.id, "prediction": out}
                if isinstance(out, Skipped):  # no image: scored as an empty answer, and counted
                    record = {"id": item.id, "prediction": "", "skipped": out.reason}
                sink.write(json.dumps(record) + "\n")
                records.append((item.id, record))
            sink.flush()  # a crash loses at most the batch in flight
    gathered = gather_to_rank0(records)
    if rank != 0:
        return {}, []
    check_unique_ids(gathered, name)
    predictions = {**done, **dict(gathered)}
    missing = [item.id for item in items if item.id not in predictions]
    if missing:
        raise RuntimeError(f"{name}: no prediction for {len(missing)} item(s), e.g. {missing[:5]}")
    ordered = {item.id: predictions[item.id]["prediction"] for item in items}
    skipped = SkipCounter(
        predictions[item.id]["skipped"] for item in items if "skipped" in predictions[item.id]
    )
    if skipped:
        print(
            f"[libra] {name}: {sum(skipped.values())} of {len(items)} item(s) had no readable image and "
            f"count as empty answers ({dict(skipped)})",
            flush=True,
        )
    submission = task.predictions_json(ordered)
    (out_dir / "predictions.json").write_text(json.dumps(submission, indent=1) + "\n")
    if not task.scored(items):
        print(
            f"[libra] {name}: no answers to score against; {out_dir / 'predictions.json'} holds "
            f"{len(submission)} answers ({len(items)} generated) for the evaluation server",
            flush=True,
        )
        return {}, _table_rows(items[:TABLE_ROWS], ordered, {})
    metrics, per_item = task.score(items, ordered)
    headline = task.headline(metrics)
    if skipped:
        metrics["skipped"] = dict(skipped)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n")
    return headline, _table_rows(items[:TABLE_ROWS], ordered, per_item)


@torch.no_grad()
def _generate(task, model, processor, batch: Sequence[Item]) -> list[str | Skipped]:
    """Greedy or beam decoding of a left-padded batch; an item whose image could not be read gets
    its ``Skipped`` marker instead of a text."""
    samples = [item.make_sample() for item in batch]
    valid = [i for i, s in enumerate(samples) if not isinstance(s, Skipped)]
    texts: list[str | Skipped] = list(samples)
    if not valid:
        return texts
    device = next(model.parameters()).device
    inputs = processor([samples[i] for i in valid], generation=True, padding_side="left", device=device)
    prompt_length = inputs["input_ids"].shape[-1]
    tokenizer = processor.text_tokenizer
    out = model.generate(
        **inputs,
        max_new_tokens=task.decoding.max_new_tokens,
        num_beams=task.decoding.num_beams,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    decoded = processor.batch_decode(out[:, :, prompt_length:])  # (K, B, T) new tokens only
    for i, text in zip(valid, decoded):
        texts[i] = task.postprocess(text)
    return texts


def _torn(path: Path) -> bool:
    """Whether the file's last line lacks its newline (the process died while writing it)."""
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _read_partial_predictions(out_dir: Path) -> dict[Any, dict[str, Any]]:
    """Every prediction already written by any rank: id -> {"prediction", and "skipped" (the reason)
    for an item without an image}. A torn last line (a crash mid-write) is ignored."""
    predictions: dict[Any, dict[str, Any]] = {}
    for path in sorted(out_dir.glob("predictions.rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            predictions[record.pop("id")] = record
    return predictions


def _table_rows(
    items: Sequence[Item], predictions: Mapping[Any, str], per_item: Mapping[Any, float]
) -> list[list]:
    rows = []
    for item in items:
        sample = item.make_sample()
        image = getattr(sample, "image", None)
        rows.append(
            [image, item.prompt, predictions[item.id], " | ".join(item.references), per_item.get(item.id)]
        )
    return rows
