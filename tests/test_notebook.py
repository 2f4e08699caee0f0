"""examples/quickstart.ipynb: stored without outputs, and it runs top to bottom in a fresh folder
(trains the tiny run it needs, asks about a photo, draws images, scores VQA items) without an error."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from launch_env import LAUNCHER_VARIABLES

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} holds outputs"
    assert notebook.metadata.kernelspec.name == "python3"


def _texts(notebook) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


def _png_count(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


@pytest.mark.slow
def test_quickstart_runs_in_a_fresh_folder(tmp_path, monkeypatch):
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    # "python3" must be this interpreter (the one libra is installed in), whatever kernels the machine
    # has: a spec of that name in JUPYTER_PATH, which is searched first, runs sys.executable.
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("LIBRA_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("LIBRA_NOTEBOOK_WORKDIR", "LIBRA_NOTEBOOK_RUN", *LAUNCHER_VARIABLES):
        monkeypatch.delenv(name, raising=False)  # the kernel and its run.py inherit this environment
    cwd = tmp_path / "work"
    cwd.mkdir()

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    text = _texts(notebook)
    assert f"python:  {sys.executable}\n" in text
    assert "trained in" in text  # nothing was there: the notebook built its checkpoint
    assert "VQA accuracy on 12 questions:" in text
    assert _png_count(notebook) == 3  # the photo, the drawn images, the scored VQA items
    run = cwd / "notebook_run"
    assert (run / "tiny_run" / "export" / "config.json").is_file()
    assert (run / "synthetic_vqa" / "metrics.json").is_file()
    assert not (run / "cache").exists()  # LIBRA_CACHE_DIR wins over the notebook's default
    assert any((tmp_path / "cache").iterdir())
