"""The DeepSpeed training recipe (docs/design.md §7): `train(cfg)` in recipe.py and the pieces it uses."""
