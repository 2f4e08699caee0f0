"""Every `python run.py ...` command of README.md composes (`--cfg job`, as a user would check it).

Commands are read from the README's ```bash blocks: continuation lines are joined, trailing comments
elided arguments (`...`)
dropped and placeholders (`<run>`) filled in. Running them is the business of the run tests
(test_runs.py, test_paper_runs.py, test_multiprocess_runs.py, tests/train/test_default_run.py),
which launch the same commands with tiny dimensions.
"""

from __future__ import annotations

import re
import shlex
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ROOT, run_py


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("python run.py"):
                commands.append(line)
    return commands


def arguments(command: str) -> list[str]:
    """The overrides a user types: placeholders such as `<run>` filled in, elisions dropped."""
    words = shlex.split(re.sub(r"<[^<>]+>", "x", command), comments=True)[2:]  # after "python run.py"
    if "-m" in words:  # a sweep: compose its first job (Hydra prints no config for a whole sweep)
        words = [_first_value(w) for w in words if w != "-m"]
    return [w for w in words if w != "..."]


def _first_value(override: str) -> str:
    key, _, value = override.partition("=")
    simple_sweep = "," in value and not value.startswith(("[", "{", "'", '"', "tag(", "interval("))
    return f"{key}={value.split(',')[0]}" if simple_sweep else override


COMMANDS = readme_commands()


def test_the_readme_documents_commands():
    assert len(COMMANDS) >= 15


@pytest.mark.slow
def test_every_readme_command_composes(tmp_path):
    """Each command in a `python run.py` of its own, two at a time (most of a composition is the
    interpreter importing torch and transformers on one core); every failure is reported."""

    def compose(index: int) -> str | None:
        folder = tmp_path / str(index)
        folder.mkdir()
        result = run_py([*arguments(COMMANDS[index]), "--cfg", "job"], cwd=folder, timeout=180)
        if result.returncode != 0 or "task:" not in result.stdout:
            return f"{COMMANDS[index]}\n{result.stderr[-3000:]}"
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for f in pool.map(compose, range(len(COMMANDS))) if f is not None]
    assert not failures, "\n\n".join(failures)
