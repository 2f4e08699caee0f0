"""Metric logging: one small interface, a JSONL file that is always written, W&B as one backend.

The trainer and the benchmark runner only see ``MetricLogger``:

    with build_logger(cfg, run_dir, resume_id=state.wandb_run_id) as logger:
        logger.log({"train/loss": 2.31, "train/lr": 1e-4}, step=10)
        logger.log_table("benchmark/samples", ["image", "question", "prediction"], rows, step=10)
        logger.log_artifact("export", "model", run_dir / "export")   # only with logger.log_artifacts
        logger.summary({"benchmark/vqav2/accuracy": 76.1})          # the run's final numbers
    # leaving the block finishes the W&B run (exit code 1 if an exception escaped) and writes
    # <run dir>/curves.png from <run dir>/metrics.jsonl (libra/curves.py)

Only rank 0 logs; other ranks get a logger that does nothing. W&B runs offline unless an API key is
configured, so a laptop or a cluster without internet never blocks on the network. W&B is imported
lazily: ``import libra.tracking`` stays cheap.

A W&B run is named after the experiment and the overrides of its command line
(``tiny/lr=3e-3,bridge_rank=8``; in a sweep only the swept ones) and grouped by experiment; the jobs
of one multirun share a group of their own (``tiny-sweep-<sweep dir name>``): see ``run_name`` and
``sweep_group``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from libra.distributed import is_main

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class MetricLogger:
    """Interface shared by every logger; the base class is the do-nothing logger of ranks > 0."""

    run_id: str | None = None  # backend run id, saved with checkpoints so a resume continues the run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars under fixed slash names (``train/loss``, ``perf/tokens_per_s``, ...)."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        """A table of rows; PIL images in a cell are stored as images."""

    def summary(self, values: Mapping[str, float]) -> None:
        """The run's final numbers (benchmark and baseline scores): the W&B run summary."""

    def log_artifact(self, name: str, type: str, path: str | Path, step: int | None = None) -> None:
        """A checkpoint or export folder (or one file) as a versioned artifact of this run."""

    def mark_preempting(self) -> None:
        """The job is stopping to be resumed later (pre-emption): say so before ``finish``."""

    def finish(self, exit_code: int = 0) -> None:
        """Flush and close; safe to call twice."""

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


class JsonlLogger(MetricLogger):
    """``metrics.jsonl`` (one ``{"step": .., "time": .., name: value}`` per call) and table files.

    Tables go to ``tables/<key>_<step>.jsonl``; images in them are written as PNGs next to it and
    referenced by file name, so the run dir alone is enough to inspect predictions.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS_FILE
        if resume_step is not None and path.exists():
            truncate_metrics(path, resume_step)
        # Append: a resumed run keeps the history of the steps before the interruption.
        self._file = open(path, "a")  # noqa: SIM115 - open for the run's lifetime

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"step": int(step), "time": time.time()}
        record.update({name: float(value) for name, value in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        stem = f"{key.replace('/', '_')}_{step}"
        table_dir = self.run_dir / "tables"
        table_dir.mkdir(exist_ok=True)
        with open(table_dir / f"{stem}.jsonl", "w") as f:
            for i, row in enumerate(rows):
                cells = {}
                for column, value in zip(columns, row, strict=True):
                    if _is_image(value):
                        name = f"{stem}_{i}_{column}.png"
                        value.save(table_dir / name)
                        value = name
                    cells[column] = value
                f.write(json.dumps(cells) + "\n")

    def finish(self, exit_code: int = 0) -> None:
        if not self._file.closed:
            self._file.close()


class WandbLogger(MetricLogger):
    """One W&B run; offline files land in ``<run dir>/wandb``.

    ``mode="auto"`` picks online when an API key is configured (``WANDB_API_KEY`` or ``wandb login``)
    and offline otherwise; ``WANDB_MODE`` in the environment still wins, as W&B users expect.

    Name and group: ``name`` wins when given; otherwise ``run_name(experiment, overrides, ...)``. A
    job whose run dir lies inside ``sweep_dir`` (a multirun job) joins ``sweep_group(group,
    sweep_dir)`` instead of ``group`` and is named by its swept overrides only (``sweep_params``, the
    sweeper's parameters, and the sweeps of the multirun's command line that Hydra recorded in
    ``<sweep dir>/multirun.yaml``); ``sweep_dir=None`` keeps every job in ``group``.

    ``system_metrics``: W&B samples CPU, memory, disk, network and GPU use (every 15 s) into the run.
    ``console``: what of this process's output the run keeps (its Logs tab): ``wrap`` (Python's
    stdout and stderr: prints, progress bar, warnings, tracebacks; the terminal still shows it all),
    ``redirect`` (the file descriptors: also output of C++ code and child processes, at the cost of
    routing the terminal through a W&B thread), ``off`` (nothing).
    ``upload_max_mb``: artifact files up to this size are uploaded; larger ones are logged as
    references (``file://`` path, size and checksum, not the bytes): fetchable wherever that
    filesystem is mounted.
    """

    CONSOLE = ("off", "wrap", "redirect")

    def __init__(
        self,
        run_dir: str | Path,
        run_config: Mapping[str, Any],
        project: str,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] = (),
        name: str | None = None,
        entity: str | None = None,
        mode: str = "auto",
        system_metrics: bool = True,
        console: str = "wrap",
        upload_max_mb: float = 64,
        experiment: str | None = None,
        overrides: Sequence[str] = (),
        sweep_dir: str | None = None,
        sweep_params: Mapping[str, Any] | None = None,
        resume_id: str | None = None,
    ) -> None:
        import wandb

        if mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"logger.backend.mode={mode!r}; use auto, online, offline or disabled")
        if console not in self.CONSOLE:
            raise ValueError(f"logger.backend.console={console!r}; use {', '.join(self.CONSOLE)}")
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
        tags = list(tags)
        swept = None
        if sweep_dir is not None and _inside(run_dir, sweep_dir):
            group = sweep_group(group or experiment or project, sweep_dir)
            swept = swept_keys(sweep_dir, sweep_params)
            tags.append("sweep")
        if name is None and experiment is not None:
            name = run_name(experiment, overrides, swept)
        self.upload_max_mb = upload_max_mb
        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            tags=[str(t)[:64] for t in tags],  # W&B rejects tags longer than 64 characters
            name=name,
            config=dict(run_config),
            dir=str(run_dir),
            mode=mode,
            id=resume_id,
            resume="allow" if resume_id else None,
            # Each multirun job in one Python process gets its own run instead of reusing the last.
            reinit="create_new",
            settings=wandb.Settings(console=console, x_disable_stats=not system_metrics, silent=True),
        )
        self.run_id = self._run.id
        self._finished = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=int(step))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        import wandb

        data = [[wandb.Image(v) if _is_image(v) else v for v in row] for row in rows]
        self._run.log({key: wandb.Table(columns=list(columns), data=data)}, step=int(step))

    def summary(self, values: Mapping[str, float]) -> None:
        self._run.summary.update({key: float(value) for key, value in values.items()})

    def log_artifact(self, name: str, type: str, path: str | Path, step: int | None = None) -> None:
        """``<name>-<run id>``, aliases ``latest`` and ``step_<step>``; a new version per call."""
        import wandb

        root = Path(path).resolve()
        files = _files_under(root)
        if not files:
            raise FileNotFoundError(f"log_artifact({name!r}): {root} holds no file")
        artifact = wandb.Artifact(
            f"{name}-{self.run_id}", type=type, metadata={"path": str(root), "step": step}
        )
        referenced = 0
        for file in files:
            inside = file.name if file == root else str(file.relative_to(root))
            if file.stat().st_size > self.upload_max_mb * 2**20:
                # W&B reads the file once for its checksum but neither copies nor uploads it
                artifact.add_reference(file.as_uri(), name=inside)
                referenced += 1
            else:
                artifact.add_file(str(file), name=inside)
        aliases = ["latest"] + ([f"step_{step}"] if step is not None else [])
        self._run.log_artifact(artifact, aliases=aliases)
        print(
            f"[libra] W&B artifact {artifact.name} ({type}, {root}): {len(files) - referenced} file(s) "
            f"uploaded, {referenced} referenced (over {self.upload_max_mb} MB)",
            flush=True,
        )

    def mark_preempting(self) -> None:
        self._run.mark_preempting()

    def finish(self, exit_code: int = 0) -> None:
        if not self._finished:
            self._finished = True
            self._run.finish(exit_code=exit_code)


class RunLogger(MetricLogger):
    """What rank 0 uses: the JSONL file plus an optional backend; draws the curves on finish.

    ``log_artifacts``: hand checkpoints and exports to the backend (``logger.log_artifacts``); off,
    ``log_artifact`` does nothing, so the recipe calls it unconditionally.
    """

    def __init__(
        self,
        run_dir: str | Path,
        backend: MetricLogger | None,
        resume_step: int | None = None,
        log_artifacts: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = JsonlLogger(run_dir, resume_step)
        self.backend = backend
        self.log_artifacts = log_artifacts
        self.run_id = backend.run_id if backend is not None else None
        self._finished = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.jsonl.log(metrics, step)
        if self.backend is not None:
            self.backend.log(metrics, step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        self.jsonl.log_table(key, columns, rows, step)
        if self.backend is not None:
            self.backend.log_table(key, columns, rows, step)

    def summary(self, values: Mapping[str, float]) -> None:
        if self.backend is not None:
            self.backend.summary(values)

    def log_artifact(self, name: str, type: str, path: str | Path, step: int | None = None) -> None:
        if self.log_artifacts and self.backend is not None:
            self.backend.log_artifact(name, type, path, step)

    def mark_preempting(self) -> None:
        if self.backend is not None:
            self.backend.mark_preempting()

    def finish(self, exit_code: int = 0) -> None:
        from libra.curves import plot_curves

        if self._finished:
            return
        self._finished = True
        self.jsonl.finish()
        try:
            plot_curves(self.run_dir / METRICS_FILE, self.run_dir / CURVES_FILE)
        finally:
            if self.backend is not None:
                self.backend.finish(exit_code)


def build_logger(
    cfg: Any, run_dir: str | Path, resume_id: str | None = None, resume_step: int | None = None
) -> MetricLogger:
    """The logger of this process: ``RunLogger`` on rank 0 (JSONL + ``cfg.logger.backend``), else no-op.

    The caller owns it: open it in a ``with`` block (or ``finish`` it), so that a task that raises
    closes its W&B run, marked failed, before the next job of a multirun starts its own.

    ``cfg.logger.backend`` is a ``_target_`` config (e.g. ``WandbLogger``) or null; it receives the run
    dir, the resolved config (``run_config``) and ``resume_id`` (the backend run id of the run being resumed).
    ``resume_step``: training starts after this step (0 for a fresh start), so the rows of later steps
    that ``metrics.jsonl`` holds from an interrupted earlier run are dropped first (one row per step).
    ``cfg.logger.log_artifacts`` (default false): log checkpoints and exports as backend artifacts.
    """
    if not is_main():
        return MetricLogger()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    backend = None
    if cfg.logger.backend is not None:
        # A partial first: handing the config dict to instantiate() would build the `_target_`s in it.
        make_backend = instantiate(cfg.logger.backend, _partial_=True)
        run_config = OmegaConf.to_container(cfg, resolve=True)
        backend = make_backend(run_dir=str(run_dir), run_config=run_config, resume_id=resume_id)
    log_artifacts = bool(cfg.logger.get("log_artifacts", False))
    return RunLogger(run_dir, backend, resume_step, log_artifacts)


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Drop the rows after `last_step` (and a line a kill cut short) from a metrics file, in one
    atomic replace; returns how many rows were dropped."""
    from libra.durable_files import write_text_atomic

    kept, dropped = [], 0
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += int(bool(line.strip()))
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
        print(f"[libra] {path}: dropped {dropped} row(s) after step {last_step} (resumed)", flush=True)
    return dropped


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl`` file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# Overrides that say how or where a job runs, not what it trains: left out of run names.
_NOT_IN_NAMES = ("experiment", "sweep", "task", "resume", "hydra", "logger", "cluster")
NAME_LIMIT = 128  # W&B's limit for group names; names are kept to it too, so they stay readable


def run_name(experiment: str, overrides: Sequence[str], swept: Collection[str] | None = None) -> str:
    """``<experiment>/<key=value,...>`` from the command-line overrides, e.g. ``tiny/lr=3e-3,bridge_rank=8``.

    A key is shortened to its last part (``optimizer.lr`` -> ``lr``) unless two overrides share it,
    a path value to its last two parts; overrides of ``experiment``, ``sweep``, ``task``, ``resume``,
    ``hydra.*``, ``logger.*`` and ``cluster.*`` are left out. ``swept``: keep only these keys (the
    ones that tell the jobs of a sweep apart; the rest is shared by the group). Characters other
    than letters, digits and ``._-=,+~:@/`` become ``_``; a name over 128 characters is cut and ends
    in ``~`` + 6 hex digits of a hash of the whole, so two long names stay distinct.
    """
    pairs = []
    for override in overrides:
        key, has_value, value = override.partition("=")
        key = key.lstrip("+~")
        if key.split(".")[0] in _NOT_IN_NAMES or (swept and key not in swept):
            continue
        pairs.append((key, value.strip("'\""), override.startswith("~") and not has_value))
    short = [key.rsplit(".", 1)[-1] for key, _, _ in pairs]
    items = []
    for (key, value, removed), last in zip(pairs, short):
        key = last if short.count(last) == 1 else key
        if removed:
            items.append(f"~{key}")
            continue
        if "/" in value:
            value = "/".join(value.rstrip("/").split("/")[-2:])
        items.append(f"{key}={value}")
    name = experiment + ("/" + ",".join(items) if items else "")
    name = re.sub(r"[^\w.=,+~:@/-]+", "_", name)
    return _bounded(name)


def sweep_group(group: str, sweep_dir: str | Path) -> str:
    """The W&B group of every job of one multirun: ``<group>-sweep-<sweep dir name>`` (its timestamp)."""
    return _bounded(f"{group}-sweep-{Path(sweep_dir).name}")


def swept_keys(sweep_dir: str | Path, sweep_params: Mapping[str, Any] | None) -> set[str] | None:
    """The keys a multirun varies: its sweeper's ``params`` (sweep files) and the sweeps of its command
    line (``a=1,2``, ``range(...)``, ...) from Hydra's record ``<sweep dir>/multirun.yaml``. None when
    neither says (a sweeper that records nothing): then names keep every override."""
    keys = {str(k).lstrip("+~") for k in (sweep_params or {})}
    record = Path(sweep_dir) / "multirun.yaml"
    if record.exists():
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        command_line = OmegaConf.select(OmegaConf.load(record), "hydra.overrides.task", default=[])
        for override in OverridesParser.create().parse_overrides(list(command_line)):
            if override.is_sweep_override():
                keys.add(override.key_or_group)
    return keys or None


def _bounded(text: str, limit: int = NAME_LIMIT) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    return f"{text[: limit - 7]}~{digest}"


def _inside(run_dir: str | Path, sweep_dir: str | Path) -> bool:
    """A run dir inside the sweep dir: this job is one of the multirun's (a single run's is elsewhere)."""
    run, sweep = Path(run_dir).absolute(), Path(sweep_dir).absolute()
    return run != sweep and run.is_relative_to(sweep)


def _files_under(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names)


def _is_image(value: Any) -> bool:
    return hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size")


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
