"""The DeepSpeed training recipe (docs/design.md §7): `train(cfg)` in recipe.py and the pieces it uses.

`train` is imported on first use, so `import libra.train.optim` (tests, tools) does not load DeepSpeed.
"""


def __getattr__(name: str):
    if name == "train":
        from .recipe import train

        return train
    raise AttributeError(f"module 'libra.train' has no attribute {name!r}")
