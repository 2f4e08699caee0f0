"""Inference tasks of run.py on an exported checkpoint folder: `task=chat` and `task=generate`."""
