"""hydra-submitit-launcher's SLURM launcher plus two things a cluster user wants before queueing:

* every job's config is validated (libra.validation) on the submitting machine, so a typo fails in
  a second instead of after hours in the queue;
* ``dry_run=true`` (``cluster.dry_run=true``) prints the sbatch script submitit would write and the
  overrides of each job, and submits nothing.

Hydra discovers launchers only inside the ``hydra_plugins`` namespace package, hence this folder at
the repository root (it is importable whenever run.py is, since Python puts run.py's folder first on
``sys.path``).
"""

# No `from __future__ import annotations`: Hydra executes plugin modules without registering them in
# sys.modules, and dataclasses then cannot resolve string annotations.
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


@dataclass
class LibraSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.libra_slurm_launcher.launcher.LibraSlurmLauncher"
    dry_run: bool = False  # print the sbatch script and the job list instead of submitting


ConfigStore.instance().store(
    group="hydra/launcher", name="libra_slurm", node=LibraSlurmQueueConf, provider="libra"
)


class LibraSlurmLauncher(SlurmLauncher):
    def __init__(self, dry_run: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.dry_run = dry_run

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from libra.validation import validate_jobs

        assert self.hydra_context is not None and self.config is not None
        validate_jobs(self.hydra_context.config_loader, self.config, job_overrides)
        if not self.dry_run:
            return super().launch(job_overrides, initial_job_idx)
        print(render_sbatch(self.params, num_jobs=len(job_overrides)))
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            print(f"# job {idx}: {' '.join(filter_overrides(overrides)) or '(defaults)'}")
        print(f"# dry run: {len(job_overrides)} job(s) not submitted")
        return []


def render_sbatch(params: dict[str, Any], num_jobs: int) -> str:
    """The sbatch script submitit writes for these launcher parameters (one job, or an array of N).

    The parameters go through submitit's own conversion (generic names such as ``timeout_min`` ->
    ``time``, ``mem_gb`` -> ``mem``) and sbatch rendering; only the check for ``srun`` is skipped, so
    the dry run works on a laptop.
    """
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    class OfflineSlurmExecutor(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2  # pretend srun exists: we only render, never submit

    executor = OfflineSlurmExecutor(
        folder=params["submitit_folder"], max_num_timeout=params["max_num_timeout"]
    )
    generic = set(OmegaConf.structured(BaseQueueConf).keys()) - {"submitit_folder"}
    values = {
        k: v for k, v in params.items() if v is not None and k not in ("submitit_folder", "max_num_timeout")
    }
    converted = executor._convert_parameters({k: v for k, v in values.items() if k in generic})
    converted.update({k: v for k, v in values.items() if k not in generic})
    executor.update_parameters(**converted)
    if num_jobs > 1:
        executor.parameters["map_count"] = num_jobs  # what map_array sets: an sbatch job array
    return executor._make_submission_file_text(executor._submitit_command_str, uid="dry-run")
