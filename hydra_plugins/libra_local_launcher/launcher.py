"""Hydra's basic launcher (the jobs of a multirun one after the other, in this process), with every job's
config validated (libra.validation) before the first one starts: `-m optimizer.lr=1e-3,0` fails at once
instead of after job 0 has trained in full. The SLURM launcher does the same before it submits
(hydra_plugins/libra_slurm_launcher). An adaptive sweeper (optuna) hands over a few trials at a time;
each batch is validated before it runs.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules without registering them in
# sys.modules, and dataclasses then cannot resolve string annotations.
from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_launcher import BasicLauncher, BasicLauncherConf
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn


@dataclass
class LibraLocalLauncherConf(BasicLauncherConf):
    _target_: str = "hydra_plugins.libra_local_launcher.launcher.LibraLocalLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="libra_local", node=LibraLocalLauncherConf, provider="libra"
)


class LibraLocalLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from libra.validation import validate_jobs

        assert self.hydra_context is not None and self.config is not None
        validate_jobs(self.hydra_context.config_loader, self.config, job_overrides)
        return super().launch(job_overrides, initial_job_idx)
