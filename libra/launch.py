"""Start a task in one process, under torchrun, or inside a SLURM job; record the run first.

run.py hands the task's entry point (from the table in libra/tasks.py) and the composed config to
``launch(task, cfg)``, which picks the path from ``cluster.launcher``:

* ``local``    call the task here (world size 1).
* ``torchrun`` write the resolved config once, then start ``torchrun ... -m libra.launch <config>``;
  every rank loads that one file, looks its ``task`` up in the same table and shares that one run
  dir. With ``cluster.nodes`` > 1 the same command runs on every node (static rendezvous with
  ``cluster.node_rank``, or c10d with ``cluster.rdzv_id``) into one shared ``hydra.run.dir``.
* ``slurm``    we are a task of a job submitted by hydra-submitit-launcher (``cluster=slurm``):
  export RANK / WORLD_SIZE / MASTER_ADDR from the SLURM variables, then call the task.
* ``run.py`` started by an outside launcher (``torchrun ... run.py``, a PyTorchJob): every rank
  composed a config of its own; the process group is formed at once and rank 0's resolved config,
  run dir included, is the one every rank runs.

Every path records the run in its run dir (rank 0): the resolved config, the command
line overrides, the git commit and the installed packages. When ``objective`` is set, the value of
that metric in ``<run dir>/metrics.json`` is returned for Hydra's sweeper.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from libra.distributed import rank, shut_down_process_group
from libra.exit_codes import RunStopped, read_stop_record
from libra.run_lock import hold_run_dir

CONFIG_FILE = "config.yaml"
NODE_CONFIGS = "launch"  # <run dir>/launch/<host>-<pid>/: each node's config on several nodes
HYDRA_OWN_FILES = {".hydra", "run.log"}  # what Hydra writes into a run dir before the task starts
REPO_ROOT = Path(__file__).resolve().parents[1]
# Read once, at import: set when an outside launcher (torchrun run.py, deepspeed run.py) started this
# process. Later the recipe sets LOCAL_RANK itself for one-process runs, which must not count.
STARTED_BY_OUTSIDE_LAUNCHER = "LOCAL_RANK" in os.environ


def launch(
    task: Callable[[DictConfig], Any], cfg: DictConfig, overrides: list[str] | None = None
) -> float | None:
    """Run ``task`` (``cfg.task``'s entry point) the way ``cfg.cluster.launcher`` says; returns the sweep
    objective or None. Under torchrun the ranks look ``cfg.task`` up in libra/tasks.py themselves."""
    overrides = overrides or []
    launcher = cfg.cluster.launcher
    if launcher == "slurm":
        _export_slurm_distributed_env()
    elif STARTED_BY_OUTSIDE_LAUNCHER:
        cfg = agree_on_rank0_config(cfg)
    run_dir = Path(cfg.run_dir)
    with hold_run_dir(run_dir) if takes_run_dir_lock(cfg) else nullcontext():
        if launcher == "torchrun" and cfg.cluster.nodes > 1:
            _require_shared_run_dir()
            run_torchrun(cfg, write_node_config(cfg, run_dir, overrides))  # worker rank 0 records the run
        elif launcher == "torchrun":
            record_run(cfg, run_dir, overrides)
            run_torchrun(cfg, run_dir / CONFIG_FILE)
        else:
            if rank() == 0:
                record_run(cfg, run_dir, overrides)
            task(cfg)
    return objective(cfg, run_dir)


def takes_run_dir_lock(cfg: DictConfig) -> bool:
    """One job per run dir (libra/run_lock.py): the process that launches takes the lock before anything
    is written. On several nodes global rank 0's worker takes it instead (`run_rank`), and torchrun
    workers run under their parent's."""
    return rank() == 0 and not (cfg.cluster.launcher == "torchrun" and cfg.cluster.nodes > 1)


def torchrun_command(cfg: DictConfig, config_file: Path) -> list[str]:
    """The torchrun command line that starts this node's ranks on ``config_file``."""
    c = cfg.cluster
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={c.nodes}"]
    command.append(f"--nproc_per_node={c.gpus_per_node}")
    if c.nodes == 1:
        command.append(f"--master_port={c.master_port}")
    elif c.rdzv_id is not None:  # c10d: node ranks are handed out at the rendezvous
        command += ["--rdzv_backend=c10d", f"--rdzv_endpoint={c.master_addr}:{c.master_port}"]
        command.append(f"--rdzv_id={c.rdzv_id}")
    else:  # static: every node names its own rank
        command += [f"--node_rank={c.node_rank}", f"--master_addr={c.master_addr}"]
        command.append(f"--master_port={c.master_port}")
    return [*command, "-m", "libra.launch", str(config_file)]


def run_torchrun(cfg: DictConfig, config_file: Path) -> None:
    """Start this node's ranks on ``config_file`` and wait; a failed rank fails the run.

    torchrun runs in a session of its own, so a signal meant for the job (Ctrl-C, SLURM's or a
    scheduler's SIGTERM, SIGUSR1/2) reaches the ranks once: this process forwards it as SIGTERM,
    which torchrun passes on and the ranks answer with a checkpoint (``RunStopped``, exit 75)."""
    command = torchrun_command(cfg, config_file)
    print("launching:", " ".join(command), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command, env=env, cwd=os.getcwd(), start_new_session=True)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    previous = {sig: signal.signal(sig, lambda *_: process.send_signal(signal.SIGTERM)) for sig in forwarded}
    try:
        returncode = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if returncode != 0:
        record = read_stop_record(cfg.run_dir)  # torchrun exits 1 whatever its ranks returned
        if record is not None:
            raise RunStopped(int(record["exit_code"]), record)
        raise RuntimeError(f"torchrun exited with code {returncode}; see the rank logs above")


def run_rank(config_file: str, tasks: dict[str, Callable[[DictConfig], Any]]) -> None:
    """Entry point of each torchrun rank: the config the launching process wrote, no Hydra; the
    task's function from ``tasks`` (the table of libra/tasks.py).

    On several nodes each node wrote its own copy (``<run dir>/launch/``); global rank 0 records
    the run from its node's copy, as a one-node launcher does before starting the ranks."""
    config_file = Path(config_file)
    cfg = OmegaConf.load(config_file)
    assert isinstance(cfg, DictConfig)
    records = config_file.parent.parent.name == NODE_CONFIGS and rank() == 0
    with hold_run_dir(Path(cfg.run_dir)) if records else nullcontext():
        if records:
            overrides = (config_file.parent / "overrides.txt").read_text().splitlines()
            record_run(cfg, Path(cfg.run_dir), overrides)
        tasks[cfg.task](cfg)
    shut_down_process_group()  # after success only: a failed rank's peers must not wait in a barrier


def write_node_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> Path:
    """This node's resolved config (and overrides) under ``<run dir>/launch/<host>-<pid>/``."""
    folder = run_dir / NODE_CONFIGS / f"{socket.gethostname()}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "overrides.txt").write_text("".join(f"{o}\n" for o in overrides))
    path = folder / CONFIG_FILE
    path.write_text(OmegaConf.to_yaml(_resolved(cfg)))
    return path


def agree_on_rank0_config(cfg: DictConfig) -> DictConfig:
    """Under an outside launcher every rank composed its own config, and Hydra gave each a run dir of
    its own clock: form the process group now and run rank 0's resolved config everywhere. The run
    dirs Hydra made for the other ranks are removed when they hold nothing but Hydra's own files."""
    import torch.distributed as dist

    from libra.distributed import init_process_group

    init_process_group()
    shared = [OmegaConf.to_yaml(_resolved(cfg)) if rank() == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    agreed = OmegaConf.create(shared[0])
    own_dir = Path(cfg.run_dir)
    stray = rank() != 0 and own_dir.is_dir() and own_dir.resolve() != Path(agreed.run_dir).resolve()
    if stray and {p.name for p in own_dir.iterdir()} <= HYDRA_OWN_FILES:
        shutil.rmtree(own_dir, ignore_errors=True)
    return agreed


def record_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    """Write the resolved config with the overrides, git commit and package list."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(_resolved(cfg))
    (run_dir / CONFIG_FILE).write_text(text)
    (run_dir / "overrides.txt").write_text("".join(f"{o}\n" for o in overrides))
    (run_dir / "git.txt").write_text(_git_state())
    packages = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    (run_dir / "requirements.txt").write_text("\n".join(packages) + "\n")


def objective(cfg: DictConfig, run_dir: Path) -> float | None:
    """``metrics.json[cfg.objective]`` for Hydra sweepers (optuna); None when no objective is set."""
    if cfg.objective is None or rank() != 0:
        return None
    path = run_dir / "metrics.json"
    if not path.exists():
        raise RuntimeError(f"objective={cfg.objective!r} but the task wrote no {path}")
    metrics = json.loads(path.read_text())
    if cfg.objective not in metrics:
        raise KeyError(f"objective={cfg.objective!r} is not in {path}; it has: {', '.join(sorted(metrics))}")
    return float(metrics[cfg.objective])


def _resolved(cfg: DictConfig) -> DictConfig:
    """A plain copy with every interpolation resolved (``${hydra:...}`` included)."""
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def _require_shared_run_dir() -> None:
    """Nodes compose their configs apart: the run dir must be named, not taken from each node's clock."""
    from hydra.core.hydra_config import HydraConfig

    from libra.validation import ConfigError, Problem  # validation imports this module

    named = HydraConfig.initialized() and any(
        o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in HydraConfig.get().overrides.hydra
    )
    if not named:
        raise ConfigError(
            [
                Problem(
                    "hydra.run.dir",
                    "cluster=torchrun with cluster.nodes > 1 runs this command on every node, and each "
                    "would make a run dir of its own from its clock",
                    "hydra.run.dir=/shared/runs/<name>  (one folder of a filesystem every node sees)",
                )
            ]
        )


def _export_slurm_distributed_env() -> None:
    """RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the SLURM job, as torchrun would set."""
    import submitit

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def _git_state() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"commit: {sha}\nuncommitted changes: {'yes' if dirty else 'no'}\n{dirty}\n"


if __name__ == "__main__":
    # Imported here, not at the top: the table imports every task (DeepSpeed included), and what only
    # builds commands or records runs (tests, tools) should not pay for that.
    from libra.tasks import TASKS

    run_rank(sys.argv[1], TASKS)
