"""One job per run directory: a lock file taken before the job writes anything, held until it ends.

``<run dir>/run.lock`` names its holder: pid, host, start time, command line and SLURM job id. A
second job into the same run dir stops at once with an error naming the holder, before it touches
``config.yaml``, the run records, metrics or checkpoints. A lock whose holder is gone is taken over
with a warning:

* same host, and the pid no longer runs, or now belongs to another process (told apart by the
  process start time the lock records: pids are reused);
* same SLURM job: a requeued job starts again under the same job id, on any node, and the earlier
  run of it was killed by the requeue.

A lock held from another host cannot be checked from here; the error says which file to delete once
that job is known to be gone. Only the launching process takes the lock: torchrun workers started
by ``libra.launch`` run under their parent's (on several nodes, global rank 0's worker takes it).
`python run.py` takes it even before Hydra writes ``.hydra/`` and ``run.log`` (``LockRunDirCallback``,
named in conf/config.yaml); a process may take a lock it holds again (``libra.launch`` does).
The lock uses only exclusive file creation and rename, which shared filesystems (NFS, Lustre) keep
atomic, unlike ``flock``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

LOCK_FILE = "run.lock"
_HELD: dict[Path, int] = {}  # locks this process holds -> how many times it took each


class RunDirBusy(RuntimeError):
    """Another job holds the run directory."""


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: ``<array job>_<task>`` in a job array, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may contain spaces


def _this_process() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "process_start": _process_start(os.getpid()),
        "slurm_job_id": slurm_job_id(),
        "command": shlex.join(sys.argv),
    }


def _describe(holder: dict) -> str:
    where = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
    if holder.get("slurm_job_id"):
        where += f", SLURM job {holder['slurm_job_id']}"
    return f"{where} ({holder.get('command', '?')})"


def _gone(holder: dict) -> str | None:
    """Why the holder of a lock is known to be gone, or None when it may still run."""
    me = _this_process()
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return f"it is an earlier run of this SLURM job ({me['slurm_job_id']}), ended by a requeue"
    if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int):
        return None
    pid = holder["pid"]
    if pid == me["pid"]:
        return "it is this process (a job of it that ended without releasing the lock)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} no longer runs"
    except PermissionError:
        pass  # runs, as another user
    started = _process_start(pid)
    if started is not None and holder.get("process_start") not in (None, started):
        return f"process {pid} is another program now (the pid was reused)"
    return None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written by its holder this instant, or damaged


def acquire(run_dir: str | Path) -> Path:
    """Take ``<run dir>/run.lock`` for this process; raises ``RunDirBusy`` naming the holder."""
    run_dir = Path(run_dir).absolute()
    path = run_dir / LOCK_FILE
    if path in _HELD:  # taken already by this process (run.py's callback, then libra.launch)
        _HELD[path] += 1
        return path
    run_dir.mkdir(parents=True, exist_ok=True)
    me = _this_process()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            reason = _gone(holder) if holder else None
            if reason is None:
                if not holder:  # just created by another job, its content not written yet
                    time.sleep(0.2)
                    holder = _read(path)
                    if not holder:
                        continue
                raise RunDirBusy(
                    f"run dir {run_dir} is in use by another job: {_describe(holder)}. "
                    f"Use another hydra.run.dir, or wait for that job to end. If it is known to be gone "
                    f"(e.g. its node died), delete {path} and start again."
                ) from None
            _take_over(path, holder, reason)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _HELD[path] = 1
        return path
    raise RunDirBusy(f"could not take {path}: other jobs keep taking it; start one job per run dir")


def _take_over(path: Path, holder: dict, reason: str) -> None:
    """Remove a stale lock; of two jobs that both found it stale only one rename succeeds, and a
    fresh lock renamed by mistake (the other job took it meanwhile) is put back."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != holder:  # not the stale lock we judged: another job's fresh one
        with contextlib.suppress(FileExistsError):  # back in place, unless a third job took the name
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return
    aside.unlink(missing_ok=True)
    print(
        f"[libra] WARNING: took over {path} from {_describe(holder)}: {reason}", file=sys.stderr, flush=True
    )


def release(path: str | Path) -> None:
    """Remove the lock if this process still holds it (and took it no more times than it releases it)."""
    path = Path(path).absolute()
    if _HELD.get(path, 0) > 1:
        _HELD[path] -= 1
        return
    _HELD.pop(path, None)
    holder = _read(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """``with hold_run_dir(run_dir):`` the job's whole life; released however it ends."""
    path = acquire(run_dir)
    try:
        yield path
    finally:
        release(path)


class LockRunDirCallback(Callback):
    """Hydra callback of `python run.py` (conf/config.yaml `hydra.callbacks`): a single run takes its run
    dir's lock before Hydra writes ``.hydra/`` and ``run.log`` into it, so a second job into a busy run
    dir changes nothing there. Whether a process locks at all is `libra.launch.takes_run_dir_lock`.
    (Multirun jobs get fresh run dirs of their sweep; libra.launch locks each one.)"""

    def __init__(self) -> None:
        self.path: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from libra.launch import takes_run_dir_lock

        if not takes_run_dir_lock(config):
            return
        try:
            self.path = acquire(config.hydra.run.dir)
        except RunDirBusy as error:
            # Hydra turns a callback's exception into a warning and runs the job anyway: exit here
            print(f"[libra] {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        atexit.register(release, self.path)  # also when the job ends in sys.exit (no on_run_end)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.path is not None:
            release(self.path)
            self.path = None
