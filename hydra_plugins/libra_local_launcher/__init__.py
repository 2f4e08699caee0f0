"""Hydra launcher plugin `hydra/launcher=libra_local` (selected by `cluster=local` and `cluster=torchrun`);
see launcher.py."""
