r"""Entry point: compose the Hydra config, validate it, run `task`. All logic lives in libra/.

    python run.py                                     # tiny Libra on the synthetic set: train, then benchmark
    python run.py experiment=pretrain "data.shards='/data/laion/{00000..07776}.tar'" \
        cluster=slurm cluster.nodes=5
    python run.py experiment=instruct model.init_from=<stage-1 run dir or checkpoint folder>
    python run.py -m experiment=tiny optimizer.lr=1e-4,3e-4 model.bridge_rank=4,8   # grid sweep
    python run.py -m sweep=lr_optuna                  # optuna search over the benchmark score
    python run.py cluster=torchrun cluster.gpus_per_node=8            # one machine, 8 ranks
    python run.py cluster=slurm cluster.nodes=2 cluster.dry_run=true  # print the sbatch script only
    python run.py task=benchmark checkpoint=<folder> benchmark=[vqav2,coco_caption]
    python run.py task=chat checkpoint=<folder> image=cat.jpg prompt="What is unusual here?"
    python run.py task=generate checkpoint=<folder> prompt="a red bus"

Show the composed config without running: `python run.py <overrides> --cfg job`.

`task` picks the function from the table in libra/tasks.py (train: libra/train/recipe.py `train`);
`launch` runs it here, under torchrun or in a SLURM job (libra/launch.py).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from libra.config_view import print_composed_config
from libra.launch import launch
from libra.tasks import TASKS
from libra.validation import validate


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    validate(cfg)  # before any work: a bad override fails here, naming the key and the fix
    overrides = list(HydraConfig.get().overrides.task)
    print_composed_config(cfg, overrides)  # print_config=diff (default) | full | none
    return launch(TASKS[cfg.task], cfg, overrides=overrides)


if __name__ == "__main__":
    main()
