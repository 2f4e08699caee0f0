"""Start a task in one process, under torchrun, or inside a SLURM job; record the run first.

run.py hands the composed config to ``launch(cfg)``, which picks the path from ``cluster.launcher``:

* ``local``    call the task here (world size 1).
* ``torchrun`` write the resolved config to ``<run dir>/config.yaml`` once, then start
  ``torchrun --nproc_per_node=N -m libra.launch <run dir>``; every rank loads that one file and
  shares that one run dir. (Launching ``torchrun run.py`` instead would make every rank compose its
  own config and create its own timestamped output dir: the Hydra pitfall this avoids.)
* ``slurm``    we are a task of a job submitted by hydra-submitit-launcher (``cluster=slurm``):
  export RANK / WORLD_SIZE / MASTER_ADDR from the SLURM variables, then call the task.

Every path records the run in its run dir (rank 0): the resolved config (also printed), the command
line overrides, the git commit and the installed packages. When ``objective`` is set, the value of
that metric in ``<run dir>/metrics.json`` is returned for Hydra's sweeper.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# task -> "module:function"; each function takes the composed config.
TASKS = {
    "train": "libra.train:train",
    "benchmark": "libra.benchmark:evaluate",
    "chat": "libra.tasks.chat:chat",
    "generate": "libra.tasks.generate:generate",
}
CONFIG_FILE = "config.yaml"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Read once, at import: set when an outside launcher (torchrun run.py, deepspeed run.py) started this
# process. Later the recipe sets LOCAL_RANK itself for one-process runs, which must not count.
_STARTED_BY_OUTSIDE_LAUNCHER = "LOCAL_RANK" in os.environ


def launch(cfg: DictConfig, overrides: list[str] | None = None) -> float | None:
    """Run ``cfg.task`` the way ``cfg.cluster.launcher`` says; returns the sweep objective or None."""
    _refuse_foreign_launcher(cfg)
    run_dir = Path(cfg.run_dir)
    launcher = cfg.cluster.launcher
    if launcher == "slurm":
        _export_slurm_distributed_env()
    if _rank() == 0:
        record_run(cfg, run_dir, overrides or [])
    if launcher == "torchrun":
        run_torchrun(cfg, run_dir)
    else:
        run_task(cfg)
    return objective(cfg, run_dir)


def run_task(cfg: DictConfig) -> Any:
    """Import and call the task's entry point (imports stay lazy: `task=chat` never loads DeepSpeed)."""
    from libra.tracking import finish_open_loggers

    module_name, function_name = TASKS[cfg.task].split(":")
    try:
        return getattr(importlib.import_module(module_name), function_name)(cfg)
    except BaseException:
        finish_open_loggers(exit_code=1)
        raise


def torchrun_command(cfg: DictConfig, run_dir: Path) -> list[str]:
    """The torchrun command line that starts every rank on the saved config of ``run_dir``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={cfg.cluster.gpus_per_node}",
        f"--master_port={cfg.cluster.master_port}",
        "-m",
        "libra.launch",
        str(run_dir),
    ]


def run_torchrun(cfg: DictConfig, run_dir: Path) -> None:
    """Start the ranks on the config saved in ``run_dir`` and wait; a failed rank fails the run."""
    command = torchrun_command(cfg, run_dir)
    print("launching:", " ".join(command), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, env=env, cwd=os.getcwd())
    if result.returncode != 0:
        raise RuntimeError(f"torchrun exited with code {result.returncode}; see the rank logs above")


def worker_main(run_dir: str) -> None:
    """Entry point of each torchrun rank: the config written by the launching process, no Hydra."""
    cfg = OmegaConf.load(Path(run_dir) / CONFIG_FILE)
    assert isinstance(cfg, DictConfig)
    run_task(cfg)


def record_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    """Print the resolved config and write it with the overrides, git commit and package list."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    text = OmegaConf.to_yaml(resolved)
    print(text, flush=True)
    (run_dir / CONFIG_FILE).write_text(text)
    (run_dir / "overrides.txt").write_text("".join(f"{o}\n" for o in overrides))
    (run_dir / "git.txt").write_text(_git_state())
    packages = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    (run_dir / "requirements.txt").write_text("\n".join(packages) + "\n")


def objective(cfg: DictConfig, run_dir: Path) -> float | None:
    """``metrics.json[cfg.objective]`` for Hydra sweepers (optuna); None when no objective is set."""
    if cfg.objective is None or _rank() != 0:
        return None
    path = run_dir / "metrics.json"
    if not path.exists():
        raise RuntimeError(f"objective={cfg.objective!r} but the task wrote no {path}")
    metrics = json.loads(path.read_text())
    if cfg.objective not in metrics:
        raise KeyError(f"objective={cfg.objective!r} is not in {path}; it has: {', '.join(sorted(metrics))}")
    return float(metrics[cfg.objective])


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _refuse_foreign_launcher(cfg: DictConfig) -> None:
    """run.py under an outside launcher (torchrun run.py, deepspeed run.py) composes once per rank."""
    if _STARTED_BY_OUTSIDE_LAUNCHER and cfg.cluster.launcher != "slurm":
        raise RuntimeError(
            "run.py was started by torchrun/deepspeed: every rank would compose its own config and run "
            "dir. Start it plainly and let it launch the ranks: "
            "python run.py cluster=torchrun cluster.gpus_per_node=N"
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
    worker_main(sys.argv[1])
