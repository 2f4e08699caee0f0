"""Exit codes of ``python run.py`` besides 0 (finished) and 1 (an error, named in the log).

A training job that stops early on purpose raises ``RunStopped`` (a ``SystemExit``, so Hydra and the
launchers pass its code through) after it has written what it promises; rank 0 also leaves
``<run dir>/stopped.json`` saying why (code, step, checkpoint), for schedulers and for launchers
that only see a process failure (torchrun reports 1 whatever its workers returned).
Imports nothing heavy: ``libra.launch`` may read these before torch is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

# Stopped by SIGTERM / SIGINT / SIGUSR1 / SIGUSR2 after the current optimizer step, with a complete
# checkpoint of that step written: `resume=auto` (or a requeued SLURM job) continues exactly.
# 75 is EX_TEMPFAIL of sysexits.h: "temporary failure, try again later".
PREEMPTED = 75
# Stopped after `trainer.max_bad_steps` consecutive steps whose loss or gradient norm was not finite;
# none of those steps changed the weights. stopped.json names the newest good checkpoint.
NON_FINITE = 76

STOP_RECORD = "stopped.json"


class RunStopped(SystemExit):
    """Raised to end a job with one of the codes above; `report` is what stopped.json holds."""

    def __init__(self, code: int, report: dict) -> None:
        super().__init__(code)
        self.report = report


def write_stop_record(run_dir: str | Path, report: dict) -> Path:
    """``<run dir>/stopped.json``: why the job stopped (rank 0 writes it)."""
    from libra.durable_files import write_text_atomic

    path = Path(run_dir) / STOP_RECORD
    write_text_atomic(path, json.dumps(report, indent=2, sort_keys=True, allow_nan=True) + "\n")
    return path


def clear_stop_record(run_dir: str | Path) -> None:
    """A job that starts (again) in the run dir: the record of an earlier stop no longer applies."""
    (Path(run_dir) / STOP_RECORD).unlink(missing_ok=True)


def read_stop_record(run_dir: str | Path) -> dict | None:
    """The record of the job's early stop, or None when it did not stop early."""
    path = Path(run_dir) / STOP_RECORD
    return json.loads(path.read_text()) if path.is_file() else None
