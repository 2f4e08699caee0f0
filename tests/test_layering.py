"""The dependency rules of STYLE.md, checked on the source: who may import whom inside libra."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "libra"

# package -> libra sub-packages it must never import
FORBIDDEN = {
    "model": {"tokenizer", "data", "train", "benchmark", "tracking"},
    "tokenizer": {"model", "data", "train", "benchmark", "tracking"},
    "data": {"model", "train", "benchmark"},
}


def _libra_imports(path: Path) -> set[str]:
    """Second-level libra modules imported by a file (absolute and relative imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(ROOT.parent).parts[:-1]  # e.g. ("libra", "model")
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            elif node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "libra" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layers(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"libra/{package} has no modules"
    offenders = {
        str(f.relative_to(ROOT.parent)): sorted(_libra_imports(f) & FORBIDDEN[package]) for f in files
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"layering violated: {offenders}"


# What run.py may import, and why: the table of task entry points, the launcher that runs one here,
# under torchrun or in a SLURM job (it is also what every torchrun rank runs, so it cannot live in
# run.py), the pre-launch check and the config view. Anything else belongs in libra/.
RUN_PY_IMPORTS = {
    "libra.tasks": {"TASKS"},
    "libra.launch": {"launch"},
    "libra.validation": {"validate"},
    "libra.config_view": {"print_composed_config"},
}
OUTSIDE_LIBRA = {"hydra", "hydra.core.hydra_config", "omegaconf"}


def test_run_py_imports_only_the_task_table_and_the_launcher():
    tree = ast.parse((ROOT.parent / "run.py").read_text())
    imported: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            imported.setdefault(node.module, set()).update(alias.name for alias in node.names)
    libra_imports = {m: names for m, names in imported.items() if m.split(".")[0] == "libra"}
    assert libra_imports == RUN_PY_IMPORTS
    assert set(imported) - set(libra_imports) <= OUTSIDE_LIBRA, sorted(imported)
    nested = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and n not in tree.body]
    assert not nested, "run.py imports inside a function"


def test_the_task_table_holds_imported_functions_and_train_is_two_hops_from_run_py():
    from libra.tasks import TASKS
    from libra.train.recipe import train
    from libra.validation import TASKS as VALIDATED_TASKS

    assert set(TASKS) == set(VALIDATED_TASKS)  # the pre-launch check accepts exactly the table's tasks
    assert all(callable(f) and f.__module__.startswith("libra.") for f in TASKS.values())
    assert TASKS["train"] is train  # run.py -> launch(TASKS["train"], cfg) -> train(cfg)
    source = (ROOT / "tasks.py").read_text() + (ROOT / "launch.py").read_text()
    assert "importlib.import_module" not in source and "__import__" not in source


def test_no_module_defines_a_module_level_getattr():
    """Names are imported where they are used, not resolved on first access (PEP 562)."""
    offenders = [
        str(path.relative_to(ROOT.parent))
        for path in sorted(ROOT.rglob("*.py"))
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
    ]
    assert not offenders


def test_every_public_function_name_is_unique():
    """A module-level function's name says which one it is: grep finds one definition (methods of
    different classes may share a name)."""
    homes: dict[str, list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
                homes.setdefault(node.name, []).append(str(path.relative_to(ROOT.parent)))
    clashes = {name: files for name, files in homes.items() if len(files) > 1}
    assert not clashes, clashes
