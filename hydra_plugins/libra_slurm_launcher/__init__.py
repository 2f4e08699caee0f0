"""Hydra launcher plugin `hydra/launcher=libra_slurm` (selected by `cluster=slurm`); see launcher.py."""
