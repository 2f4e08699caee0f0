"""``evaluate(cfg)``: run a checkpoint on the benchmark tasks of ``cfg.benchmark`` and score them.

    python run.py task=benchmark checkpoint=<folder> benchmark=[vqav2,coco_caption]

For each task (one ``conf/benchmark/<name>.yaml``, built with Hydra's ``instantiate``): the items are
sharded across ranks, each rank generates in left-padded batches and appends its predictions to
``<run_dir>/<task>/predictions.rank<r>.jsonl`` after every batch (a rerun skips every item already
there, whatever the world size was), then the ranks gather ``(id, prediction, references)`` to
rank 0, which adds the predictions of earlier runs, scores
with the pure metric modules and writes ``predictions.json`` (official submission layout) and
``metrics.json`` (the CLI's keys). Scores are logged as ``benchmark/<task>/<metric>``, with a table
of (image, prompt, prediction, references, score).

Config read: ``checkpoint`` (our export / an official folder, or a DeepSpeed checkpoint folder —
detected), ``run_dir``, ``benchmark`` (task name -> task config), ``trainer.precision`` (optional,
fp32 | bf16), ``logger`` (for ``libra.tracking.build_logger``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from libra.benchmark.distributed import check_unique_ids, gather_to_rank0, shard, world
from libra.benchmark.tasks import Item
from libra.data.skips import Skipped

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
    model, processor = load_for_evaluation(cfg.checkpoint, precision)
    results: dict[str, float] = {}
    own_logger = build_logger(cfg, run_dir) if logger is None else contextlib.nullcontext(logger)
    with own_logger as logger:
        for name, task in tasks.items():
            scores, rows = run_task(name, task, model, processor, run_dir / name)
            if world()[0] != 0:
                continue
            logged = {f"benchmark/{name}/{k}": float(v) for k, v in scores.items()}
            logger.log(logged, step=step)
            columns = ["image", "prompt", "prediction", "references", "score"]
            logger.log_table(f"benchmark/{name}/samples", columns, rows, step=step)
            results.update(logged)
    return results


# ------------------------------------------------------------------------------- checkpoints


def load_for_evaluation(checkpoint: str | os.PathLike, precision: str = "fp32"):
    """(model in eval mode on the device, processor) from a checkpoint folder.

    * our export / an official folder: ``config.json`` + weights + processor files, loaded with
      ``from_pretrained``;
    * a DeepSpeed checkpoint folder (``mp_rank_00_model_states.pt`` inside, ZeRO stage 0-2, or a
      run's ``checkpoints/`` folder with ``step_*`` inside: the newest is taken): the weights come
      from it, config and processor from the nearest folder above holding ``config.json`` or the
      run's ``export`` folder.
    """
    from libra.model import LibraForCausalLM
    from libra.tokenizer.processor import LibraProcessor

    folder = Path(checkpoint)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if (folder / "config.json").is_file():
        model = LibraForCausalLM.from_pretrained(folder, torch_dtype=dtype)
        processor = LibraProcessor.from_pretrained(folder)
    else:
        states = _deepspeed_model_states(folder)
        pretrained = _pretrained_folder_near(states)
        model = LibraForCausalLM.from_pretrained(pretrained, torch_dtype=dtype)
        module = torch.load(states, map_location="cpu", weights_only=False)["module"]
        model.load_state_dict(module, strict=True)
        processor = LibraProcessor.from_pretrained(pretrained)
    return model.to(device).eval(), processor.to(device)


def _deepspeed_model_states(folder: Path) -> Path:
    direct = folder / "mp_rank_00_model_states.pt"
    if direct.is_file():
        return direct
    found = sorted(folder.glob("*/mp_rank_00_model_states.pt")) or sorted(
        folder.glob("*/*/mp_rank_00_model_states.pt")
    )
    if not found:
        raise FileNotFoundError(
            f"checkpoint {folder}: neither a model folder (config.json) nor a DeepSpeed checkpoint "
            "(mp_rank_00_model_states.pt); for ZeRO-3 run DeepSpeed's zero_to_fp32.py first, or pass "
            "the run's export folder"
        )
    return found[-1]


def _pretrained_folder_near(states: Path) -> Path:
    for parent in states.parents:
        for candidate in (parent, parent / "export"):
            if (candidate / "config.json").is_file():
                return candidate
    raise FileNotFoundError(
        f"{states}: no config.json in a folder above it or in a run's export/ folder; the model config "
        "and processor files are needed next to DeepSpeed weights"
    )


# ------------------------------------------------------------------------------------- tasks


def run_task(name: str, task, model, processor, out_dir: Path) -> tuple[dict[str, float], list[list]]:
    """Generate for the missing items of this rank's shard, gather, score on rank 0.

    Returns (headline scores, table rows) on rank 0 and ({}, []) elsewhere.
    """
    rank, world_size = world()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = task.items()
    done = _read_partial_predictions(out_dir)
    todo = [item for item in items if item.id not in done]
    mine = shard(todo, rank, world_size)
    partial = out_dir / f"predictions.rank{rank}.jsonl"
    records = []
    with partial.open("a", encoding="utf-8") as sink:
        for start in range(0, len(mine), task.batch_size):
            batch = mine[start : start + task.batch_size]
            for item, text in zip(batch, _generate(task, model, processor, batch)):
                sink.write(json.dumps({"id": item.id, "prediction": text}) + "\n")
                records.append((item.id, text, item.references))
            sink.flush()  # a crash loses at most the batch in flight
    gathered = gather_to_rank0(records)
    if rank != 0:
        return {}, []
    check_unique_ids(gathered, name)
    predictions = {**done, **{i: p for i, p, _ in gathered}}
    missing = [item.id for item in items if item.id not in predictions]
    if missing:
        raise RuntimeError(f"{name}: no prediction for {len(missing)} item(s), e.g. {missing[:5]}")
    ordered = {item.id: predictions[item.id] for item in items}
    (out_dir / "predictions.json").write_text(json.dumps(task.predictions_json(ordered), indent=1) + "\n")
    metrics, per_item = task.score(items, ordered)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n")
    return task.headline(metrics), _table_rows(items[:TABLE_ROWS], ordered, per_item)


@torch.no_grad()
def _generate(task, model, processor, batch: Sequence[Item]) -> list[str]:
    """Greedy or beam decoding of a left-padded batch; items whose image is missing get ''."""
    samples = [item.make_sample() for item in batch]
    valid = [i for i, s in enumerate(samples) if not isinstance(s, Skipped)]
    texts = [""] * len(batch)
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
    for i, sample in zip(valid, decoded):
        texts[i] = task.postprocess(sample.text)
    return texts


def _read_partial_predictions(out_dir: Path) -> dict[Any, str]:
    """Every prediction already written by any rank (a torn last line is ignored)."""
    predictions: dict[Any, str] = {}
    for path in sorted(out_dir.glob("predictions.rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            predictions[record["id"]] = record["prediction"]
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
