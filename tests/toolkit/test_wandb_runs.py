"""W&B as a researcher reads it, through ``python run.py`` (slow): a single tiny run read back from its
offline files (name, group, summary, artifacts, system metrics, console). The group and names of a
``-m`` sweep are checked on the multirun of test_runs.py."""

from __future__ import annotations

import json

import pytest

from .conftest import run_py
from .test_runs import ONE_STEP
from .wandb_files import offline_runs

# Two steps with a checkpoint after each, a benchmark of a few items at the end.
TWO_STEPS = [
    *[a for a in ONE_STEP if not a.startswith(("trainer.max_steps", "trainer.benchmark_at_end"))],
    "trainer.max_steps=2",
    "trainer.checkpoint_every=1",
    "trainer.keep_last=2",
    "benchmark.synthetic_vqa.max_items=8",
    "benchmark.synthetic_caption.max_items=4",
]


@pytest.mark.slow
def test_a_single_run_is_named_grouped_summarised_and_logs_its_artifacts(tmp_path):
    env = {"LIBRA_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}
    args = [*TWO_STEPS, "optimizer.lr=3e-3", "model.bridge_rank=8", "logger.log_artifacts=true"]
    args.append("logger.backend.upload_max_mb=0.5")  # the tiny model's weights are larger: referenced
    result = run_py(args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (tmp_path / "outputs" / "tiny").iterdir()
    (run,) = offline_runs(run_dir / "wandb")

    assert run.exit_code == 0
    # every override in the name, in command-line order; cut at 128 characters with a hash
    assert run.name.startswith("tiny/global_batch_size=2,micro_batch_size=2,")
    assert len(run.name) == 128 and run.name[-7] == "~"
    assert (run.group, run.job_type, run.tags) == ("tiny", "train", ["tiny", "train"])  # not a sweep
    assert run.stats_records >= 1  # system metrics on by default
    assert "synthetic_vqa/accuracy" in run.console  # the printed score table is in the run's logs

    # the final scores and their baselines, as metrics.json has them
    final = json.loads((run_dir / "metrics.json").read_text())
    assert {k for k in final if k.startswith("baseline/")}, final
    for key, value in final.items():
        assert run.summary[key] == pytest.approx(value), key

    checkpoints = [a for a in run.artifacts if a.type == "checkpoint"]
    assert [(a.name, sorted(a.aliases)) for a in checkpoints] == [
        (f"checkpoint-{run.run_id}", ["latest", "step_1"]),
        (f"checkpoint-{run.run_id}", ["latest", "step_2"]),
    ]
    assert checkpoints[1].metadata == {"path": str(run_dir / "checkpoints" / "step_000002"), "step": 2}
    (export,) = [a for a in run.artifacts if a.type == "model"]
    assert export.name == f"export-{run.run_id}" and export.metadata["path"] == str(run_dir / "export")
    on_disk = {str(p.relative_to(run_dir / "export")) for p in (run_dir / "export").rglob("*") if p.is_file()}
    assert set(export.files) == on_disk
    weights = export.files["model.safetensors"]
    assert weights["ref"] == (run_dir / "export" / "model.safetensors").as_uri()  # large: a reference
    assert export.files["config.json"]["ref"] == ""  # small: uploaded
