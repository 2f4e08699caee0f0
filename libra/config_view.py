"""What run.py prints before it starts: the composed config, by default only where it differs.

`print_config=diff` (default) prints a compact tree of the values that differ from `python run.py`
with no overrides, each with where it came from: the command line, a config group option
(`model=tiny`) or the experiment / sweep file. `print_config=full` prints the whole resolved YAML,
`print_config=none` nothing. The full resolved config is always written to `<run dir>/config.yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

MODES = ("diff", "full", "none")
_SKIP = ("hydra", "print_config")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (interpolations left as written)."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: node}


def config_differences(
    cfg: Mapping[str, Any],
    defaults: Mapping[str, Any],
    overrides: Sequence[str],
    choices: Mapping[str, str | None],
    default_choices: Mapping[str, str | None],
) -> list[tuple[str, Any, str]]:
    """(dotted key, value, source) for every leaf of `cfg` that `defaults` lacks or holds otherwise."""
    # `model=tiny` picks a group option (its values are reported as coming from it), `model.x=1` a value
    overridden = [key for o in overrides if (key := o.split("=", 1)[0].lstrip("+~")) not in choices]
    changed_groups = {g: c for g, c in choices.items() if c != default_choices.get(g) and "/" not in g}
    old = flatten({k: v for k, v in defaults.items() if k not in _SKIP})
    found = []
    for key, value in flatten({k: v for k, v in cfg.items() if k not in _SKIP}).items():
        if key in old and old[key] == value:
            continue
        top = key.split(".", 1)[0]
        if any(key == o or key.startswith(o + ".") for o in overridden):
            source = "command line"
        elif top in changed_groups and top not in ("experiment", "sweep"):
            source = f"{top}={changed_groups[top]}"
        elif changed_groups.get("sweep"):
            source = f"sweep={changed_groups['sweep']}"
        else:
            source = f"experiment={choices.get('experiment')}"
        found.append((key, value, source))
    return found


def render_differences(differences: Sequence[tuple[str, Any, str]], choices: Mapping[str, str | None]) -> str:
    """The compact tree: group choices first, then one line per changed value under its parents."""
    lines = ["config (what differs from `python run.py`; print_config=full shows all of it):"]
    picked = ", ".join(f"{g}={c}" for g, c in sorted(choices.items()) if c is not None and "/" not in g)
    lines.append(f"  groups: {picked}")
    swapped = {source.split("=", 1)[0] for _, _, source in differences if "=" in source}
    swapped -= {"experiment", "sweep"}
    for group in sorted(swapped):  # a whole group option: one line, its own values with print_config=full
        lines.append(f"  {group}: ...".ljust(60) + f" # {group}={choices.get(group)}")
    kept = [d for d in differences if d[2].split("=", 1)[0] not in swapped]
    previous: list[str] = []
    for key, value, source in sorted(kept):
        *parents, leaf = key.split(".")
        common = 0  # parents already printed for the previous key
        while common < min(len(parents), len(previous)) and parents[common] == previous[common]:
            common += 1
        lines.extend("  " * (depth + 1) + parents[depth] + ":" for depth in range(common, len(parents)))
        lines.append(f"{'  ' * (len(parents) + 1)}{leaf}: {value}".ljust(60) + f" # {source}")
        previous = parents
    if not differences:
        lines.append("  (the defaults)")
    return "\n".join(lines)


def print_composed_config(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Print `cfg` as `cfg.print_config` says; call inside the Hydra app (run.py)."""
    mode = cfg.get("print_config", "diff")
    if mode == "none":
        return
    if mode == "full":
        print(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)), flush=True)
        return
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    defaults = compose(config_name=hydra_cfg.job.config_name, return_hydra_config=True)
    differences = config_differences(
        OmegaConf.to_container(cfg, resolve=False),
        OmegaConf.to_container(defaults, resolve=False),
        overrides,
        dict(hydra_cfg.runtime.choices),
        dict(defaults.hydra.runtime.choices),
    )
    print(render_differences(differences, dict(hydra_cfg.runtime.choices)), flush=True)
