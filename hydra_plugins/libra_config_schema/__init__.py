"""Registers libra's config schemas (libra/config_schema.py) when Hydra starts.

Hydra imports every module of the `hydra_plugins` package before it composes anything, so any compose
of conf/ (run.py, `hydra.compose` in tests or a notebook) finds the `schema_*` configs that the yaml files
extend, whether or not the caller imported libra first.
"""

import libra.config_schema  # noqa: F401  (registration happens on import)
