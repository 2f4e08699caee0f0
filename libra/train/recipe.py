"""The Libra training recipe: `train(cfg)` reads set-up -> loop -> save (spec §7, paper §4).

One engine path for every DeepSpeed set-up (stage 0, ZeRO-2/3, with or without offload): the JSON is
generated from `cfg.deepspeed` + `cfg.trainer` (deepspeed_config.py) and written to the run dir.
Stage 1 of the paper is `trainer.freeze_language=true` (only the visual expert trains), stage 2 is
the same recipe with everything trainable, started from stage 1's export (`model=from_pretrained`).

Differences from the official trainer, on purpose: gradient clipping in every stage (B6), weight
decay only on matrices and a working `llm_lr_scale` (B22, optim.py), and an export that
`from_pretrained` loads, so stage 1 feeds stage 2 directly (B4, B5; export.py).

Launch (see README): `python run.py` (one process), `python run.py cluster=torchrun
cluster.gpus_per_node=8` (one machine), `python run.py cluster=slurm cluster.nodes=5` (many machines).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from libra.data.batching import DataBatch, ReaderCollator, ReaderState
from libra.data.samplers import ResumableSampler
from libra.tracking import MetricLogger, build_logger

from .baselines import majority_baseline
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .deepspeed_config import deepspeed_config, write_deepspeed_config
from .export import export_pretrained, export_requested
from .models import check_model_matches_processor
from .optim import freeze_language
from .state import TrainState, seed_everything

# Single-process runs without a launcher: DeepSpeed would otherwise go looking for MPI.
SINGLE_PROCESS_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}


def init_distributed() -> tuple[int, int]:
    """Join (or create) the process group; gloo on CPU, nccl on GPUs. Returns (rank, world size)."""
    if "RANK" not in os.environ:
        for key, value in SINGLE_PROCESS_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))  # parallel tests don't collide
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return dist.get_rank(), dist.get_world_size()


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, checkpoint, export and benchmark; returns the final metrics (rank 0; {} elsewhere)."""
    # ------------------------------------------------------------------ set-up
    t = cfg.trainer
    run_dir = Path(cfg.run_dir)
    rank, world_size = init_distributed()
    run_dir.mkdir(parents=True, exist_ok=True)  # the launcher made it already, unless called directly
    processor = instantiate(cfg.tokenizer)
    # Seeded right before the model (building a processor may draw random numbers): the same initial
    # weights on every rank and in every run with this seed.
    seed_everything(cfg.seed)
    model = instantiate(cfg.model)(processor)  # vocabulary and vision shapes come from the processor
    check_model_matches_processor(model.config, processor)
    if t.freeze_language:
        freeze_language(model)  # stage 1 (spec §7.1): only the visual expert and its heads learn
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_set = instantiate(cfg.data.train)
    val_set = instantiate(cfg.data.val) if cfg.data.get("val") is not None else None

    # Map-style sets are ordered by a resumable sampler; streams (LAION shards) resume themselves.
    sampler = None
    if not isinstance(train_set, IterableDataset):
        sampler = ResumableSampler(train_set, shuffle=True, seed=cfg.seed, rank=rank, world_size=world_size)
    loader = DataLoader(
        train_set,
        batch_size=t.micro_batch_size,
        sampler=sampler,
        collate_fn=ReaderCollator(processor.collator),  # tokenises in the workers; counts skipped samples
        num_workers=t.num_workers,
    )
    reader = ReaderState()  # where the data stands, as of the batches actually used
    optimizer = instantiate(cfg.optimizer)(model)
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=t.max_steps)
    ds_config = deepspeed_config(
        instantiate(cfg.deepspeed),
        t.global_batch_size,
        t.micro_batch_size,
        world_size,
        t.precision,
        t.grad_clip,
    )
    if rank == 0:
        write_deepspeed_config(ds_config, run_dir)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    processor.to(engine.device)  # the frozen vision tokenizer runs inside the step, next to the model

    state = TrainState()
    checkpoint = resolve_resume(cfg.resume, run_dir)
    if checkpoint is not None:
        load_checkpoint(engine, state, checkpoint)
        reader.load_state_dict(state.data)
        (sampler or train_set).load_state_dict(state.data)
        print(f"[libra] resumed from {checkpoint} at step {state.step}", flush=True)
    else:
        seed_everything(cfg.seed + rank)  # from here on ranks draw different random numbers
    logger = build_logger(cfg, run_dir, resume_id=state.wandb_run_id)
    state.wandb_run_id = logger.run_id
    flops_per_token = 6 * sum(p.numel() for p in model.parameters())  # nanoGPT-style estimate
    accumulation = engine.gradient_accumulation_steps()

    # ------------------------------------------------------------------ loop
    batches = endless(loader, sampler or train_set, reader)
    last_inputs = None
    progress = tqdm(
        total=t.max_steps, initial=state.step, disable=rank != 0, desc="train", dynamic_ncols=True
    )
    engine.train()
    while state.step < t.max_steps:
        start = time.perf_counter()
        sums = torch.zeros(5)  # loss, loss_text, loss_image, tokens, samples (this rank)
        for _ in range(accumulation):
            batch: DataBatch = next(batches)
            reader.update(batch)
            # A batch whose samples were all skipped still takes part (every rank must run the same
            # collectives): the previous inputs again, with zero weight.
            weight = 1.0 if batch.inputs is not None else 0.0
            if batch.inputs is not None:
                last_inputs = processor.to_model_inputs(batch.inputs, device=engine.device)
            inputs = last_inputs
            out = engine(**inputs, return_logits=False)
            engine.backward(out.loss * weight)
            if engine.is_gradient_accumulation_boundary():
                grad_norm = _plain_grad_norm(engine)  # None unless DeepSpeed would drop it (stage 0, fp32)
            engine.step()  # DeepSpeed steps the optimizer + scheduler only at the accumulation boundary
            sums += torch.tensor(
                [
                    out.loss.item() * weight,
                    _item(out.loss_text) * weight,
                    _item(out.loss_image) * weight,
                    inputs["attention_mask"].sum().item() * weight,
                    batch.num_samples,
                ]
            )
        state.step += 1
        state.samples_seen += int(sums[4].item())
        state.tokens_seen += int(sums[3].item())
        step_time = time.perf_counter() - start

        if state.step % t.log_every == 0 or state.step == t.max_steps:
            sums = _all_reduce_sum(sums)
            tokens, samples = sums[3].item(), sums[4].item()
            metrics = {
                "train/loss": sums[0].item() / (accumulation * world_size),
                "train/loss_text": sums[1].item() / (accumulation * world_size),
                "train/loss_image": sums[2].item() / (accumulation * world_size),
                "train/lr": scheduler.get_last_lr()[0],  # group 0 is a vision group: the base lr
                "train/grad_norm": grad_norm if grad_norm is not None else _grad_norm(engine),
                "perf/step_time": step_time,
                "perf/tokens_per_s": tokens / step_time,
                "perf/samples_per_s": samples / step_time,
                "perf/mfu": flops_per_token * tokens / step_time / (t.peak_flops_per_device * world_size),
                "perf/max_memory_gb": _max_memory_gb(),
                "data/epoch": float(reader.epoch),
            }
            metrics.update(reader.metrics())
            logger.log(metrics, state.step)
            progress.set_postfix(
                loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['perf/tokens_per_s']:.0f}"
            )
        progress.update(1)

        if val_set is not None and t.eval_every > 0 and state.step % t.eval_every == 0:
            logger.log(
                evaluate_loss(engine, processor, val_set, t.micro_batch_size, t.eval_batches), state.step
            )
            engine.train()
        if t.checkpoint_every > 0 and state.step % t.checkpoint_every == 0 and state.step < t.max_steps:
            state.data = reader.state_dict()
            save_checkpoint(engine, state, run_dir, t.keep_last)
        if t.benchmark_every > 0 and state.step % t.benchmark_every == 0 and state.step < t.max_steps:
            scores = benchmark_during_training(cfg, engine, processor, logger, run_dir, state.step)
            logger.log(scores, state.step)
            engine.train()
        if export_requested(run_dir):  # `touch <run dir>/EXPORT_NOW`: a loadable folder mid-run
            export_pretrained(engine, processor, run_dir / f"export_step_{state.step:06d}")
    progress.close()

    # ------------------------------------------------------------------ save
    state.data = reader.state_dict()
    save_checkpoint(engine, state, run_dir, t.keep_last)
    export_dir = export_pretrained(engine, processor, run_dir / "export")
    results: dict[str, float] = {}
    if val_set is not None:
        results.update(evaluate_loss(engine, processor, val_set, t.micro_batch_size, t.eval_batches))
    if cfg.get("benchmark") is not None and t.benchmark_at_end:
        del engine, optimizer  # the benchmark loads the export; free the training copy first
        # every rank generates its shard; scores go to this run's logger (one W&B run per job)
        results.update(run_benchmark(cfg, export_dir, run_dir, logger, state.step))
    logger.log(results, state.step)
    logger.finish()
    return results if rank == 0 else {}


# ---------------------------------------------------------------------- helpers of the recipe


def endless(loader: DataLoader, position, reader: ReaderState):
    """Batches forever, epoch after epoch; `position` (sampler or stream) is told each new epoch."""
    while True:
        position.set_epoch(reader.epoch)
        yield from loader
        reader.start_epoch(reader.epoch + 1)


@torch.no_grad()
def evaluate_loss(engine, processor, dataset, micro_batch_size: int, max_batches: int) -> dict[str, float]:
    """Mean validation losses over the first `max_batches` batches of every rank's share."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    engine.eval()
    sampler = ResumableSampler(dataset, shuffle=False, rank=rank, world_size=world_size)
    loader = DataLoader(
        dataset, batch_size=micro_batch_size, sampler=sampler, collate_fn=ReaderCollator(processor.collator)
    )
    sums = torch.zeros(4)
    inputs = None
    for i, batch in enumerate(loader):
        if i == max_batches:
            break
        weight = 1.0 if batch.inputs is not None else 0.0  # all skipped: keep in step, count nothing
        if batch.inputs is not None:
            inputs = processor.to_model_inputs(batch.inputs, device=engine.device)
        out = engine(**inputs, return_logits=False)
        sums += weight * torch.tensor([out.loss.item(), _item(out.loss_text), _item(out.loss_image), 1.0])
    sums = _all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return {
        "eval/loss": sums[0].item() / n,
        "eval/loss_text": sums[1].item() / n,
        "eval/loss_image": sums[2].item() / n,
    }


def benchmark_during_training(cfg: DictConfig, engine, processor, logger, run_dir: Path, step: int) -> dict:
    """A small benchmark on the live model: the first `trainer.benchmark_items` items of each task."""
    from libra.benchmark.runner import run_task

    if engine.zero_optimization_stage() == 3:
        # ranks would generate different numbers of tokens, hence run different numbers of ZeRO-3
        # parameter gathers, and wait for each other forever
        raise ValueError(
            "trainer.benchmark_every > 0 is not supported with ZeRO-3; set trainer.benchmark_every=0"
        )
    engine.eval()
    scores = {}
    for name, task_cfg in cfg.benchmark.items():
        task = instantiate(task_cfg, max_items=cfg.trainer.benchmark_items)
        out_dir = run_dir / "benchmark_during_training" / f"step_{step:06d}" / name
        headline, rows = run_task(name, task, engine.module, processor, out_dir)
        scores.update({f"benchmark/{name}/{k}": float(v) for k, v in headline.items()})
        if rows:
            columns = ["image", "prompt", "prediction", "references", "score"]
            logger.log_table(f"benchmark/{name}/samples", columns, rows, step)
    return scores


def run_benchmark(
    cfg: DictConfig, checkpoint: Path, run_dir: Path, logger: MetricLogger, step: int
) -> dict[str, float]:
    """Benchmark the export (`libra.benchmark.evaluate`), score the majority baselines on the same
    items, write `<run dir>/metrics.json` and print both side by side."""
    from libra.benchmark.runner import evaluate

    bench_cfg = OmegaConf.merge(cfg, {"checkpoint": str(checkpoint), "run_dir": str(run_dir / "benchmark")})
    results = dict(evaluate(bench_cfg, logger=logger, step=step))
    if dist.get_rank() != 0:
        return {}
    lines = [f"{'metric':<40} {'model':>9} {'baseline':>9}"]
    for name, task_cfg in cfg.benchmark.items():
        constant, scores = majority_baseline(task_cfg)
        for metric, value in scores.items():
            results[f"baseline/{name}/{metric}"] = float(value)
            model_value = results.get(f"benchmark/{name}/{metric}", float("nan"))
            lines.append(f"{name + '/' + metric:<40} {model_value:>9.3f} {value:>9.3f}")
        lines.append(f"  (baseline answer for {name}: {constant!r})")
    print("\n".join(lines), flush=True)
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _item(value: torch.Tensor | None) -> float:
    """A loss part that may be absent (no text / no image targets in the batch) counts as 0."""
    if value is None:
        return 0.0
    value = value.item()
    return 0.0 if math.isnan(value) else value


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        values = values.to(device)
        dist.all_reduce(values)
    return values.cpu()


def _grad_norm(engine) -> float:
    """Global gradient norm before clipping, as DeepSpeed computed it (NaN when it did not)."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        return float("nan")
    return float(norm.item() if torch.is_tensor(norm) else norm)


def _plain_grad_norm(engine) -> float | None:
    """Stage 0 in fp32 clips with DeepSpeed's helper but throws the norm away; measure it ourselves."""
    if engine.zero_optimization_stage() != 0 or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def _max_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
