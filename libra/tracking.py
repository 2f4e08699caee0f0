"""Metric logging: one small interface, a JSONL file that is always written, W&B as one backend.

The trainer and the benchmark runner only see ``MetricLogger``:

    with build_logger(cfg, run_dir, resume_id=state.wandb_run_id) as logger:
        logger.log({"train/loss": 2.31, "train/lr": 1e-4}, step=10)
        logger.log_table("benchmark/samples", ["image", "question", "prediction"], rows, step=10)
    # leaving the block finishes the W&B run (exit code 1 if an exception escaped) and writes
    # <run dir>/curves.png from <run dir>/metrics.jsonl

Only rank 0 logs; other ranks get a logger that does nothing. W&B runs offline unless an API key is
configured, so a laptop or a cluster without internet never blocks on the network. W&B is imported
lazily: ``import libra.tracking`` stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
_OPEN: list[MetricLogger] = []  # loggers not finished yet: libra.launch closes them if a task raises


def global_rank() -> int:
    """Rank of this process as set by torchrun / DeepSpeed / libra.launch (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


class MetricLogger:
    """Interface shared by every logger; the base class is the do-nothing logger of ranks > 0."""

    run_id: str | None = None  # backend run id, saved with checkpoints so a resume continues the run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars under fixed slash names (``train/loss``, ``perf/tokens_per_s``, ...)."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        """A table of rows; PIL images in a cell are stored as images."""

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

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run keeps the history of the steps before the interruption.
        self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 - open for the run's lifetime

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
    """

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
        resume_id: str | None = None,
    ) -> None:
        import wandb

        if mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"logger.backend.mode={mode!r}; use auto, online, offline or disabled")
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
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
            # No stdout capture (the console stays ours) and no system-metrics thread on laptops.
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self._run.id
        self._finished = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=int(step))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        import wandb

        data = [[wandb.Image(v) if _is_image(v) else v for v in row] for row in rows]
        self._run.log({key: wandb.Table(columns=list(columns), data=data)}, step=int(step))

    def finish(self, exit_code: int = 0) -> None:
        if not self._finished:
            self._finished = True
            self._run.finish(exit_code=exit_code)


class RunLogger(MetricLogger):
    """What rank 0 uses: the JSONL file plus an optional backend; draws the curves on finish."""

    def __init__(self, run_dir: str | Path, backend: MetricLogger | None) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = JsonlLogger(run_dir)
        self.backend = backend
        self.run_id = backend.run_id if backend is not None else None
        self._finished = False
        _OPEN.append(self)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.jsonl.log(metrics, step)
        if self.backend is not None:
            self.backend.log(metrics, step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        self.jsonl.log_table(key, columns, rows, step)
        if self.backend is not None:
            self.backend.log_table(key, columns, rows, step)

    def finish(self, exit_code: int = 0) -> None:
        if self._finished:
            return
        self._finished = True
        _OPEN.remove(self)
        self.jsonl.finish()
        try:
            plot_curves(self.run_dir / METRICS_FILE, self.run_dir / CURVES_FILE)
        finally:
            if self.backend is not None:
                self.backend.finish(exit_code)


def build_logger(cfg: Any, run_dir: str | Path, resume_id: str | None = None) -> MetricLogger:
    """The logger of this process: ``RunLogger`` on rank 0 (JSONL + ``cfg.logger.backend``), else no-op.

    ``cfg.logger.backend`` is a ``_target_`` config (e.g. ``WandbLogger``) or null; it receives the run
    dir, the resolved config (``run_config``) and ``resume_id`` (the backend run id of the run being resumed).
    """
    if global_rank() != 0:
        return MetricLogger()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    backend = None
    if cfg.logger.backend is not None:
        # A partial first: handing the config dict to instantiate() would build the `_target_`s in it.
        make_backend = instantiate(cfg.logger.backend, _partial_=True)
        run_config = OmegaConf.to_container(cfg, resolve=True)
        backend = make_backend(run_dir=str(run_dir), run_config=run_config, resume_id=resume_id)
    return RunLogger(run_dir, backend)


def finish_open_loggers(exit_code: int) -> None:
    """Finish every logger still open, e.g. after a task raised: the W&B run of a failed multirun
    job is closed (marked failed) before the next job of the same process starts its own."""
    for logger in list(_OPEN):
        logger.finish(exit_code)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl`` file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """PNG with one panel per loss and score metric (``*/loss*``, ``benchmark/*``, ``eval/*``).

    Returns the path, or None when there is nothing to draw (no file or no such metric).
    """
    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return None
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in read_metrics(metrics_path):
        for name, value in record.items():
            wanted = "/loss" in name or name.startswith(("benchmark/", "eval/"))
            if wanted and math.isfinite(value):
                steps, values = series.setdefault(name, ([], []))
                steps.append(record["step"])
                values.append(value)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display and in worker processes
    import matplotlib.pyplot as plt

    losses = sorted(n for n in series if "/loss" in n)
    scores = sorted(n for n in series if n not in losses)
    panels = [p for p in (losses, scores) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, names, title in zip(axes[0], panels, ["loss" if losses else "score", "score"]):
        for name in names:
            steps, values = series[name]
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=name)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


def _is_image(value: Any) -> bool:
    return hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size")


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
