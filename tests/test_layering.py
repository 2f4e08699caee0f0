"""The dependency rules of STYLE.md, checked on the source: who may import whom inside libra."""

import ast
import subprocess
import sys
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


def test_importing_libra_is_light():
    code = "import sys, libra; assert 'torch' not in sys.modules, 'libra/__init__ imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
