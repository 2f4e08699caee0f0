"""The Libra training recipe: `train(cfg)` reads set-up -> loop -> save (docs/design.md §7, paper §4).

One engine path for every DeepSpeed set-up (stage 0, ZeRO-2/3, with or without offload): the JSON is
generated from `cfg.deepspeed` + `cfg.trainer` (deepspeed_config.py) and written to the run dir.
Stage 1 of the paper is `trainer.freeze_language=true` (only the visual expert trains), stage 2 is
the same recipe with everything trainable, started from stage 1's export (`model=from_pretrained`).

Differences from the official trainer, on purpose (docs/design.md B6, B22, B4, B5): gradient clipping
in every stage, weight decay only on matrices and a working `llm_lr_scale` (optim.py), and an export
that `from_pretrained` loads, so stage 1 feeds stage 2 directly (export.py).

What survives what: a step whose loss or gradient norm is not finite is not applied, and
`trainer.max_bad_steps` of them in a row stop the run (guard.py, exit_codes.NON_FINITE); SIGTERM,
SIGINT, SIGUSR1 and SIGUSR2 stop it after the current step with a checkpoint, and under SLURM
requeue it (preemption.py, exit_codes.PREEMPTED); checkpoints and exports are complete or ignored
(checkpoint.py); a micro-batch whose every sample was skipped is passed over and counted.

Launch (see README): `python run.py` (one process), `python run.py cluster=torchrun
cluster.gpus_per_node=8` (one machine), `python run.py cluster=slurm cluster.nodes=5` (many machines).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset

from libra import distributed
from libra.data.batching import DataBatch, ReaderCollator, ReaderState
from libra.data.samplers import ResumableSampler
from libra.distributed import init_process_group, main_rank_first
from libra.exit_codes import NON_FINITE, PREEMPTED, RunStopped, clear_stop_record, write_stop_record
from libra.model.flops import training_flops_per_token
from libra.pretrained import read_training_record, save_model_files
from libra.tracking import MetricLogger, build_logger
from libra.validation import live_benchmark_problems, raise_problems

from .baselines import baseline_table
from .checkpoint import (
    list_checkpoints,
    load_checkpoint,
    newest_good_checkpoint,
    refuse_a_fresh_run_over_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from .deepspeed_config import deepspeed_config, write_deepspeed_config
from .export import export_pretrained, export_requested
from .guard import UpdateGate
from .lora import Finetune
from .models import check_model_matches_processor
from .optim import freeze_language, warmup_note
from .preemption import StopSignals, requeue_slurm_job, resume_setting
from .progress import TrainProgress
from .state import TrainState, seed_everything


@dataclass
class TrainRun:
    """What `set_up` builds and the loop and the save step use: one training run of this process."""

    cfg: DictConfig
    run_dir: Path
    rank: int
    world_size: int
    processor: Any  # LibraProcessor
    finetune: Finetune  # every weight, or LoRA adapters (conf/finetune, lora.py)
    model: Any  # LibraForCausalLM; after `drop_training_copy` None, like the four below
    engine: Any  # deepspeed.DeepSpeedEngine around `model`
    optimizer: Any
    scheduler: Any
    gate: UpdateGate | None  # refuses the update of a non-finite step
    train_set: Any
    val_set: Any | None
    sampler: ResumableSampler | None  # map-style sets; a stream (LAION shards) resumes itself
    loader: DataLoader
    reader: ReaderState  # where the data stands, as of the batches actually used
    state: TrainState
    logger: MetricLogger
    saved_step: int | None  # the step of the newest checkpoint on disk (None: none yet)
    base_record: dict | None  # the training record of `model.init_from` (None: fresh, or none kept)

    @property
    def position(self) -> Any:
        """What holds the place in the training data: the sampler, or the stream itself."""
        return self.sampler if self.sampler is not None else self.train_set

    def drop_training_copy(self) -> None:
        """Free the engine, optimizer and model: the end-of-run benchmark loads the export instead."""
        self.engine = self.optimizer = self.scheduler = self.gate = self.model = None


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, checkpoint, export and benchmark; returns the final metrics (rank 0; {} elsewhere)."""
    run = set_up(cfg)
    with run.logger:  # finishes the W&B run; marked failed (exit code 1) if anything below raises
        fit(run)
        return save_and_score(run)


# ---------------------------------------------------------------------- set-up


def set_up(cfg: DictConfig) -> TrainRun:
    """Process group, processor, model, data, DeepSpeed engine, resumed state and logger."""
    run_dir = Path(cfg.run_dir)
    rank, world_size = init_process_group()
    run_dir.mkdir(parents=True, exist_ok=True)  # the launcher made it already, unless called directly
    refuse_a_fresh_run_over_checkpoints(
        resume_setting(cfg.resume, OmegaConf.select(cfg, "cluster.launcher")), run_dir
    )
    finetune = instantiate(cfg.finetune)  # checks its settings before anything is loaded
    processor, model = build_processor_and_model(cfg, run_dir, rank, finetune)
    train_set = instantiate(cfg.data.train)
    val_set = instantiate(cfg.data.val) if cfg.data.get("val") is not None else None
    sampler = None
    if not isinstance(train_set, IterableDataset):  # streams (LAION shards) resume themselves
        sampler = ResumableSampler(train_set, shuffle=True, seed=cfg.seed, rank=rank, world_size=world_size)
    loader = DataLoader(
        train_set,
        batch_size=cfg.trainer.micro_batch_size,
        sampler=sampler,
        collate_fn=ReaderCollator(processor.collator),  # tokenises in the workers; counts skipped samples
        num_workers=cfg.trainer.num_workers,
    )
    engine, optimizer, scheduler = build_engine(cfg, model, run_dir, rank, world_size)
    processor.to(engine.device)  # the frozen vision tokenizer runs inside the step, next to the model
    state, reader = TrainState(), ReaderState()
    resumed = resume_or_seed(cfg, run_dir, engine, state, reader, sampler or train_set, rank, finetune)
    # rows metrics.jsonl holds beyond this step come from an interrupted earlier run: dropped
    logger = build_logger(cfg, run_dir, resume_id=state.wandb_run_id, resume_step=state.step)
    state.wandb_run_id = logger.run_id
    if rank == 0:
        clear_stop_record(run_dir)
    return TrainRun(
        cfg, run_dir, rank, world_size, processor, finetune, model, engine, optimizer, scheduler,
        UpdateGate(engine, optimizer), train_set, val_set, sampler, loader, reader, state, logger,
        saved_step=state.step if resumed else None, base_record=_base_record(cfg),
    )  # fmt: skip


def _base_record(cfg: DictConfig) -> dict | None:
    init_from = OmegaConf.select(cfg, "model.init_from")
    return read_training_record(init_from) if init_from else None


def build_processor_and_model(
    cfg: DictConfig, run_dir: Path, rank: int, finetune: Finetune
) -> tuple[Any, Any]:
    """The processor, then the model it shapes (stage 1 frozen or LoRA adapters, checkpointing and compile
    as asked)."""
    t = cfg.trainer
    with main_rank_first():  # a tokenizer or data set built on first use is built once, by rank 0
        processor = instantiate(cfg.tokenizer)
    # Seeded right before the model (building a processor may draw random numbers): the same initial
    # weights on every rank and in every run with this seed.
    seed_everything(cfg.seed)
    model = instantiate(cfg.model)(processor)  # vocabulary and vision shapes come from the processor
    check_model_matches_processor(model.config, processor)
    if rank == 0:  # config + processor next to the checkpoints: each step folder loads on its own
        # kept for the checkpoints a resumed run continues; rewritten when there are none (those of an
        # attempt that failed before its first checkpoint may describe another model)
        save_model_files(model.config, processor, run_dir, replace=not list_checkpoints(run_dir))
    if t.freeze_language:
        freeze_language(model)  # stage 1 (docs/design.md §7.1): only the visual expert and its heads learn
    model = finetune.prepare(model)  # finetune=lora: frozen base + adapters; full: unchanged
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.compile:
        model.model.compile_layers()  # torch.compile each decoder layer (one graph each, no break)
    return processor, model


def build_engine(cfg: DictConfig, model, run_dir: Path, rank: int, world_size: int) -> tuple[Any, Any, Any]:
    """Optimizer, schedule and the DeepSpeed engine from the generated JSON (written to the run dir)."""
    t = cfg.trainer
    optimizer = instantiate(cfg.optimizer)(model)
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=t.max_steps)
    note = warmup_note(t.max_steps, cfg.scheduler.get("warmup_steps"))
    if rank == 0 and note:
        print(f"[libra] {note}", flush=True)
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
    import deepspeed  # here, not at the top: run.py --help and config errors need none of it (seconds)

    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, optimizer, scheduler


def resume_or_seed(cfg: DictConfig, run_dir: Path, engine, state: TrainState, reader: ReaderState,
                   position, rank: int, finetune: Finetune) -> Path | None:  # fmt: skip
    """Load the checkpoint `cfg.resume` names (engine, state, data position), else seed each rank apart;
    returns the checkpoint loaded, or None."""
    setting = resume_setting(cfg.resume, OmegaConf.select(cfg, "cluster.launcher"))
    checkpoint = resolve_resume(setting, run_dir)
    if checkpoint is None:
        seed_everything(cfg.seed + rank)  # from here on ranks draw different random numbers
        return None
    load_checkpoint(engine, state, checkpoint, finetune)
    if state.step > cfg.trainer.max_steps:  # the loop would not run, and the export hold later weights
        raise ValueError(
            f"resume: {checkpoint} is at step {state.step}, past trainer.max_steps={cfg.trainer.max_steps}; "
            f"fix: trainer.max_steps={state.step} (or more) to continue it, or resume=<a step_* folder "
            f"of step {cfg.trainer.max_steps} or earlier>"
        )
    reader.load_state_dict(state.data)
    position.load_state_dict(state.data)
    print(f"[libra] resumed from {checkpoint} at step {state.step}", flush=True)
    return checkpoint


# ---------------------------------------------------------------------- loop


def fit(run: TrainRun) -> None:
    """Optimizer steps up to `trainer.max_steps`; after each, what the config asks (`after_step`)."""
    batches = endless(run.loader, run.position, run.reader)
    progress = TrainProgress(run.cfg.trainer.max_steps, run.state.step, show=run.rank == 0)
    run.engine.train()
    with StopSignals() as signals:  # a stop signal ends the loop after the current step
        while run.state.step < run.cfg.trainer.max_steps:
            step, inputs = train_step(run, batches, signals)
            after_step(run, step, inputs, signals, progress)
    progress.close()


def train_step(run: TrainRun, batches, signals: StopSignals) -> tuple[StepNumbers, dict]:
    """One optimizer step: forward and backward over the accumulated micro-batches, the gated update,
    the counters. Returns the step's numbers and the last micro-batch's model inputs."""
    engine, gate, state = run.engine, run.gate, run.state
    start = time.perf_counter()
    accumulation = engine.gradient_accumulation_steps()
    sums = torch.zeros(4, device=engine.device)  # loss, loss_text, loss_image, tokens (this rank)
    samples = 0
    for _ in range(accumulation):
        batch = next_usable_batch(batches, run.reader)
        inputs = run.processor.to_model_inputs(batch.inputs, device=engine.device)
        out = engine(**inputs, return_logits=False)
        engine.backward(out.loss)
        parts = [out.loss, _part(out.loss_text, out.loss), _part(out.loss_image, out.loss)]
        tokens = inputs["attention_mask"].sum().to(sums.dtype)
        sums += torch.stack([*parts, tokens]).detach().float()  # on the device: no host sync
        samples += batch.num_samples
        if engine.is_gradient_accumulation_boundary():
            step = StepNumbers.reduce(sums, samples, signals, _plain_grad_norm(engine), accumulation)
            gate.arm(loss_finite=step.loss_finite, grad_norm=step.plain_grad_norm)
        engine.step()  # DeepSpeed steps optimizer + scheduler only at the boundary (via the gate)
    step.applied = gate.disarm()
    step.seconds = time.perf_counter() - start
    state.step += 1
    state.samples_seen += step.local_samples
    state.tokens_seen += step.local_tokens
    state.bad_streak = 0 if step.applied else state.bad_streak + 1
    state.bad_steps += 0 if step.applied else 1
    return step, inputs


def after_step(
    run: TrainRun, step: StepNumbers, inputs: dict, signals: StopSignals, progress: TrainProgress
) -> None:
    """Log, stop on bad steps, evaluate, checkpoint, stop on a signal, benchmark, export: as asked."""
    t, state, engine, logger = run.cfg.trainer, run.state, run.engine, run.logger
    metrics = None
    if state.step % t.log_every == 0 or state.step == t.max_steps or not step.applied or step.stop:
        metrics = step_metrics(run, step, inputs)
        logger.log(metrics, state.step)
    progress.step_done(state.step, metrics)  # the console line of a log step; the bar on a terminal
    if not step.applied:
        _refused_step(run.cfg, run.run_dir, state, step, run.gate.grad_norm, logger, progress)
    if run.val_set is not None and t.eval_every > 0 and state.step % t.eval_every == 0:
        logger.log(validation_losses(run), state.step)
        engine.train()
    due = t.checkpoint_every > 0 and state.step % t.checkpoint_every == 0
    if (due and state.step < t.max_steps) or step.stop:
        saved = save_train_checkpoint(run)
        if not step.stop:  # a stopping job has seconds to exit: no pass over its files
            logger.log_artifact("checkpoint", "checkpoint", saved, state.step)
    if step.stop:
        progress.close()
        _preempted(run.cfg, run.run_dir, state, signals, step, saved, logger)
    if t.benchmark_every > 0 and state.step % t.benchmark_every == 0 and state.step < t.max_steps:
        scores = benchmark_during_training(run.cfg, engine, run.processor, logger, run.run_dir, state.step)
        logger.log(scores, state.step)
        engine.train()
    if export_requested(run.run_dir):  # `touch <run dir>/EXPORT_NOW`: a loadable folder mid-run
        folder = run.run_dir / f"export_step_{state.step:06d}"
        export_pretrained(engine, run.processor, folder, run.finetune, training_record(run))


def step_metrics(run: TrainRun, step: StepNumbers, inputs: dict) -> dict[str, float]:
    """The metrics of a log step under their fixed names (loss parts, lr, throughput, MFU, data)."""
    # FLOPs on each token's path (text weights or the low-rank image expert); the last micro-batch's
    # text/image mix stands for the step's (one device read, at log steps only)
    vision, real = inputs["vision_indices"], inputs["attention_mask"]
    flops_per_token = training_flops_per_token(run.model.config, vision, real)
    peak_flops = run.cfg.trainer.peak_flops_per_device * run.world_size
    metrics = {
        "train/loss": step.loss,
        "train/loss_text": step.loss_text,
        "train/loss_image": step.loss_image,
        "train/lr": run.scheduler.get_last_lr()[0],  # group 0 is a vision group: the base lr
        "train/grad_norm": run.gate.grad_norm,
        "train/bad_steps": run.state.bad_steps,
        "perf/step_time": step.seconds,
        "perf/tokens_per_s": step.tokens / step.seconds,
        "perf/samples_per_s": step.samples / step.seconds,
        "perf/mfu": flops_per_token * step.tokens / step.seconds / peak_flops,
        "perf/max_memory_gb": _max_memory_gb(),
        "data/epoch": float(run.reader.epoch),
    }
    metrics.update(distributed.sum_counts_over_ranks(run.reader.metrics()))  # every rank's share
    return metrics


def validation_losses(run: TrainRun) -> dict[str, float]:
    """`evaluate_loss` on the validation set with the trainer's batch size and batch count."""
    t = run.cfg.trainer
    return evaluate_loss(run.engine, run.processor, run.val_set, t.micro_batch_size, t.eval_batches)


def save_train_checkpoint(run: TrainRun) -> Path:
    """A checkpoint of this step (engine, train state, data position); returns its folder."""
    run.state.data = run.reader.state_dict()
    saved = save_checkpoint(run.engine, run.state, run.run_dir, run.cfg.trainer.keep_last, run.finetune)
    run.saved_step = run.state.step
    return saved


# ---------------------------------------------------------------------- save


def training_record(run: TrainRun) -> dict:
    """What trained the exported weights (`<export>/training.json`; all ranks call). task=generate
    reads it to say plainly when a checkpoint never saw a text-to-image sample."""
    text_to_image = distributed.sum_counts_over_ranks({"t2i": run.reader.text_to_image})["t2i"]
    return {
        "steps": run.state.step,
        "finetune": run.finetune.record()["mode"],
        "text_to_image_samples": text_to_image,  # all ranks, this run only
        "init_from": OmegaConf.select(run.cfg, "model.init_from"),  # None: fresh weights (or LLaMA's)
        "base": run.base_record,  # the init_from export's own record, if it has one
    }


def save_and_score(run: TrainRun) -> dict[str, float]:
    """The final checkpoint and export, the validation loss and the end-of-run benchmark."""
    t, state, logger = run.cfg.trainer, run.state, run.logger
    if run.saved_step != state.step:  # else resumed from the final checkpoint: it is there already
        saved = save_train_checkpoint(run)
        logger.log_artifact("checkpoint", "checkpoint", saved, state.step)  # with logger.log_artifacts
    record = training_record(run)
    export_dir = export_pretrained(run.engine, run.processor, run.run_dir / "export", run.finetune, record)
    logger.log_artifact("export", "model", export_dir, state.step)
    results: dict[str, float] = {}
    if run.val_set is not None:
        results.update(validation_losses(run))
    if run.cfg.get("benchmark") is not None and t.benchmark_at_end:
        run.drop_training_copy()
        # every rank generates its shard; scores go to this run's logger (one W&B run per job)
        results.update(run_benchmark(run.cfg, export_dir, run.run_dir, logger, state.step))
    logger.log(results, state.step)
    logger.summary(results)  # the final scores, next to their baselines, in the W&B run summary
    return results if run.rank == 0 else {}


# ---------------------------------------------------------------------- helpers of the recipe


def endless(loader: DataLoader, position, reader: ReaderState):
    """Batches forever, epoch after epoch; `position` (sampler or stream) is told each new epoch."""
    while True:
        # the epoch, and for a stream where each slot stopped (new workers start each epoch afresh)
        position.load_state_dict(reader.state_dict())
        yield from loader
        reader.start_epoch(reader.epoch + 1)


def next_usable_batch(batches, reader: ReaderState) -> DataBatch:
    """The next batch with at least one sample. A batch whose every sample was skipped is consumed,
    counted (``data/skipped/empty_micro_batch``) and passed over: the rank just draws more of its own
    data, so every rank still runs the same forwards, backwards and collectives."""
    start_epoch = reader.epoch
    while True:
        batch = next(batches)
        reader.update(batch)
        if batch.inputs is not None:
            return batch
        reader.skipped.update({"empty_micro_batch": 1})
        if reader.epoch > start_epoch + 1:
            raise RuntimeError(
                "a whole epoch of the training data gave no usable sample: every one was skipped "
                f"(counts: {dict(reader.skipped)}); check data.train and the warnings above"
            )


@dataclass
class StepNumbers:
    """One optimizer step's numbers, agreed by every rank at the accumulation boundary."""

    loss: float  # means over the step's micro-batches and ranks
    loss_text: float
    loss_image: float
    tokens: float  # all ranks
    samples: float
    local_tokens: int  # this rank (TrainState counts per rank)
    local_samples: int
    stop: bool  # some rank got a stop signal
    requeue: bool  # ... one that asks for a SLURM requeue
    plain_grad_norm: float | None  # stage 0 fp32 only (see _plain_grad_norm)
    applied: bool = True  # set by train_step: whether the update went through (UpdateGate)
    seconds: float = math.nan  # set by train_step: wall time of the step

    @property
    def loss_finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.loss, self.loss_text, self.loss_image))

    @classmethod
    def reduce(cls, sums, samples: int, signals: StopSignals, plain_norm, accumulation: int) -> StepNumbers:
        """One all-reduce of the step's sums and stop flags, one host read: a non-finite loss on
        any rank is non-finite on all, and a signal on any rank stops all after this step."""
        flags = torch.tensor([samples, signals.stop, signals.requeue], dtype=torch.float32)
        local = torch.cat([sums, flags.to(sums.device)])
        total = local.clone()
        if distributed.world_size() > 1:
            dist.all_reduce(total)
        norm = (
            plain_norm.reshape(1).float() if plain_norm is not None else torch.full_like(total[:1], math.nan)
        )
        values = torch.cat([local[3:5], total, norm]).tolist()
        local_tokens, local_samples, loss, text, image, tokens, all_samples, stop, requeue, pnorm = values
        n = accumulation * distributed.world_size()
        return cls(
            loss / n,
            text / n,
            image / n,
            tokens,
            all_samples,
            int(local_tokens),
            int(local_samples),
            stop > 0,
            requeue > 0,
            pnorm if plain_norm is not None else None,
        )


def _refused_step(
    cfg, run_dir: Path, state: TrainState, step: StepNumbers, grad_norm, logger, progress
) -> None:
    """Say that a step was not applied; stop the run after `trainer.max_bad_steps` in a row."""
    limit = cfg.trainer.max_bad_steps
    parts = f"loss={step.loss} loss_text={step.loss_text} loss_image={step.loss_image} grad_norm={grad_norm}"
    if distributed.is_main():
        print(
            f"[libra] step {state.step} not applied: {parts} ({state.bad_streak} in a row, "
            f"{state.bad_steps} in all; the run stops after {limit} in a row)",
            file=sys.stderr,
            flush=True,
        )
    if limit <= 0 or state.bad_streak < limit:
        return
    good = newest_good_checkpoint(run_dir)
    report = {
        "reason": "non-finite loss or gradient norm",
        "exit_code": NON_FINITE,
        "step": state.step,
        "first_bad_step": state.step - state.bad_streak + 1,
        "bad_steps_in_a_row": state.bad_streak,
        "loss": step.loss,
        "loss_text": step.loss_text,
        "loss_image": step.loss_image,
        "grad_norm": grad_norm,
        "last_good_checkpoint": str(good) if good is not None else None,
    }
    progress.close()
    if distributed.is_main():
        write_stop_record(run_dir, report)
        fix = "resume=<that step folder> with a lower optimizer.lr" if good else "a lower optimizer.lr"
        print(
            f"[libra] STOPPED: {state.bad_streak} steps in a row (steps {report['first_bad_step']}-"
            f"{state.step}) had a non-finite loss or gradient norm; none of them changed the weights.\n"
            f"  step {state.step}: {parts}\n"
            f"  last good checkpoint: {report['last_good_checkpoint']}\n"
            f"  try: {fix} (or a larger trainer.max_bad_steps); exit code {NON_FINITE}",
            file=sys.stderr,
            flush=True,
        )
    logger.finish(exit_code=NON_FINITE)
    raise RunStopped(NON_FINITE, report)


def _preempted(
    cfg, run_dir: Path, state: TrainState, signals: StopSignals, step: StepNumbers, checkpoint: Path, logger
) -> None:
    """After the stop step's checkpoint: record, finish the W&B run, requeue under SLURM, exit."""
    requeue = step.requeue and OmegaConf.select(cfg, "cluster.launcher") == "slurm"
    report = {
        "reason": "stop signal",
        "signal": signals.received.name if signals.received else "received by another rank",
        "exit_code": PREEMPTED,
        "step": state.step,
        "checkpoint": str(checkpoint),
        "requeue": requeue,
    }
    if distributed.is_main():
        write_stop_record(run_dir, report)
        print(
            f"[libra] stopped after step {state.step} on {report['signal']}; checkpoint {checkpoint}; "
            f"continue with resume=auto (exit code {PREEMPTED})",
            file=sys.stderr,
            flush=True,
        )
    logger.mark_preempting()
    logger.finish(exit_code=PREEMPTED)
    distributed.barrier()  # everything written before SLURM may kill the job for its requeue
    if requeue and distributed.is_main():
        report["requeued_job"] = requeue_slurm_job()
    raise RunStopped(PREEMPTED, report)


@torch.no_grad()
def evaluate_loss(engine, processor, dataset, micro_batch_size: int, max_batches: int) -> dict[str, float]:
    """Mean validation losses over the first `max_batches` batches of every rank's share.

    A batch whose samples were all skipped still runs (ZeRO-3 gathers parameters in every forward, so
    ranks must run as many), on another batch of the rank's share and with weight 0."""
    engine.eval()
    sampler = ResumableSampler(
        dataset, shuffle=False, rank=distributed.rank(), world_size=distributed.world_size()
    )
    loader = DataLoader(
        dataset, batch_size=micro_batch_size, sampler=sampler, collate_fn=ReaderCollator(processor.collator)
    )
    batches = [batch for _, batch in zip(range(max_batches), loader)]
    stand_in = next((b.inputs for b in batches if b.inputs is not None), None)
    usable = torch.tensor([float(stand_in is not None)], device=engine.device)
    if distributed.world_size() > 1:
        dist.all_reduce(usable, op=dist.ReduceOp.MIN)
    sums = torch.zeros(4, device=engine.device)
    if usable.item() > 0:
        for batch in batches:
            inputs = processor.to_model_inputs(
                batch.inputs if batch.inputs is not None else stand_in, device=engine.device
            )
            out = engine(**inputs, return_logits=False)
            weight = 1.0 if batch.inputs is not None else 0.0
            parts = [out.loss, _part(out.loss_text, out.loss), _part(out.loss_image, out.loss)]
            sums += torch.stack([*parts, torch.ones_like(out.loss)]).float() * weight
    if distributed.world_size() > 1:
        dist.all_reduce(sums)
    loss, text, image, n = sums.tolist()
    n = n if n > 0 else math.nan  # no usable validation batch on some rank: nan, not a made-up 0
    return {"eval/loss": loss / n, "eval/loss_text": text / n, "eval/loss_image": image / n}


def benchmark_during_training(cfg: DictConfig, engine, processor, logger, run_dir: Path, step: int) -> dict:
    """A small benchmark on the live model: the first `trainer.benchmark_items` items of each task."""
    from libra.benchmark.runner import run_benchmark_task

    # checked before launch too; here for configs that did not come through run.py
    raise_problems(live_benchmark_problems(engine.zero_optimization_stage(), cfg.trainer.benchmark_every))
    engine.eval()
    scores = {}
    for name, task_cfg in cfg.benchmark.items():
        task = instantiate(task_cfg, max_items=cfg.trainer.benchmark_items)
        out_dir = run_dir / "benchmark_during_training" / f"step_{step:06d}" / name
        headline, rows = run_benchmark_task(name, task, engine.module, processor, out_dir)
        scores.update({f"benchmark/{name}/{k}": float(v) for k, v in headline.items()})
        if rows:
            columns = ["image", "prompt", "prediction", "references", "score"]
            logger.log_table(f"benchmark/{name}/samples", columns, rows, step)
    return scores


def run_benchmark(
    cfg: DictConfig, checkpoint: Path, run_dir: Path, logger: MetricLogger, step: int
) -> dict[str, float]:
    """Benchmark the export (`libra.benchmark.runner.evaluate`), score the majority baselines on the same
    items, write `<run dir>/metrics.json` and print both side by side."""
    from libra.benchmark.runner import evaluate

    bench_cfg = OmegaConf.merge(cfg, {"checkpoint": str(checkpoint), "run_dir": str(run_dir / "benchmark")})
    results = dict(evaluate(bench_cfg, logger=logger, step=step))
    if not distributed.is_main():
        return {}
    baselines, lines = baseline_table(cfg.benchmark, results)
    results.update(baselines)
    print("\n".join(lines), flush=True)
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _part(value: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A loss part the model did not compute (no labels) counts as 0; a NaN stays NaN."""
    return value if value is not None else torch.zeros_like(like)


def _plain_grad_norm(engine) -> torch.Tensor | None:
    """Stage 0 in fp32 clips with DeepSpeed's helper but throws the norm away; measure it ourselves
    (on the device, before clipping; the gradients are all-reduced already, the same on every rank)."""
    if engine.zero_optimization_stage() != 0 or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _max_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
