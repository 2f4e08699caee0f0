"""Pre-emption: SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 end training after the current optimizer step.

The handler only records the signal. At the next accumulation boundary every rank adds its record
to the all-reduce of the step's numbers, so all ranks agree to stop after the same optimizer step
even when the signal reached only some of them. The recipe then finishes that step, writes a
checkpoint of it, logs it, finishes the W&B run (marked preempting) and exits with
``exit_codes.PREEMPTED``; ``resume=auto`` continues exactly where it stopped.

Under ``cluster=slurm``: SIGUSR2 is what SLURM sends before the time limit (the launcher asks for
``--signal=USR2@120``), SIGUSR1 what ``scancel --signal=USR1 <job>`` sends. After the checkpoint,
rank 0 requeues the job (``scontrol requeue <job id>``). The requeued job starts again in the same
run dir, and a job with ``SLURM_RESTART_COUNT`` > 0 resumes as ``resume=auto`` does: weights,
optimizer, data position and W&B run (its id is in the checkpoint). SIGTERM (``scancel``, and
SLURM's own pre-emption) checkpoints and exits without requeuing: a user's cancel stays a cancel,
and a partition with ``PreemptMode=REQUEUE`` requeues the job itself, which then resumes the same way.

Signals are handled during the training loop only; during the final export and benchmark the
default behaviour applies (the final checkpoint is already complete). A second SIGINT (Ctrl-C
twice) stops at once, without a checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from libra.run_lock import slurm_job_id

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """``with StopSignals() as signals:`` records the first stop signal instead of dying of it."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    @property
    def stop(self) -> bool:
        return self.received is not None

    @property
    def requeue(self) -> bool:
        return self.received in REQUEUE_SIGNALS

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker forked with our handler: keep serving
            return
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = signal.Signals(signum)
        print(
            f"[libra] {self.received.name} received: stopping after this optimizer step, with a checkpoint",
            file=sys.stderr,
            flush=True,
        )


def requeue_slurm_job() -> str | None:
    """``scontrol requeue`` this job; returns its id, or None (with the reason printed) if that failed."""
    job = slurm_job_id()
    if job is None:
        print("[libra] cannot requeue: SLURM_JOB_ID is not set", file=sys.stderr, flush=True)
        return None
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        print(f"[libra] scontrol requeue {job} failed: {detail}", file=sys.stderr, flush=True)
        return None
    print(f"[libra] requeued SLURM job {job}: it resumes from this checkpoint", file=sys.stderr, flush=True)
    return job


def resume_setting(resume: str | None, launcher: str | None) -> str | None:
    """`resume` as configured, except that a requeued SLURM job (``SLURM_RESTART_COUNT`` > 0) of
    ``cluster=slurm`` resumes from its own run dir (``auto``) when `resume` is null."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if resume is None and launcher == "slurm" and restarts > 0:
        print(f"[libra] requeued SLURM job (restart {restarts}): resume=auto", flush=True)
        return "auto"
    return resume
