"""Inference on a finished checkpoint, as run.py tasks: `task=chat` (chat.py), `task=generate`
(generate.py) and `task=benchmark` (benchmark.py). Every one loads its model through libra.pretrained."""
