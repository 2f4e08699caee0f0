"""libra.tracking: the JSONL file, W&B offline runs read back from their files, tables, curves, ranks."""

import json

import pytest
from PIL import Image

from libra import tracking

from .wandb_files import offline_runs


def _wandb(run_dir, **kwargs):
    args = dict(project="libra-test", group="g1", job_type="train", tags=["tiny", "train"], mode="offline")
    args.update(kwargs)
    return tracking.WandbLogger(run_dir, run_config={"optimizer": {"lr": 0.001}, "task": "train"}, **args)


def test_jsonl_and_wandb_offline_carry_the_same_metrics(tmp_path):
    with tracking.RunLogger(tmp_path, _wandb(tmp_path)) as logger:
        logger.log({"train/loss": 2.5, "train/lr": 1e-3}, step=1)
        logger.log({"train/loss": 1.5, "train/lr": 5e-4}, step=2)
        logger.log({"benchmark/synthetic_vqa/accuracy": 0.75}, step=2)
        run_id = logger.run_id

    records = tracking.read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("train/loss")) for r in records] == [(1, 2.5), (2, 1.5), (2, None)]
    assert (tmp_path / "curves.png").stat().st_size > 1000

    (run,) = offline_runs(tmp_path / "wandb")
    assert run.run_id == run_id
    assert (run.group, run.job_type, run.tags) == ("g1", "train", ["tiny", "train"])
    assert run.config["optimizer"] == {"lr": 0.001}
    losses = [row["train/loss"] for row in run.history if "train/loss" in row]
    assert losses == [2.5, 1.5]
    assert any(row.get("benchmark/synthetic_vqa/accuracy") == 0.75 for row in run.history)
    assert run.exit_code == 0


def test_failed_task_finishes_its_run_with_exit_code_1(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), tracking.RunLogger(tmp_path, _wandb(tmp_path)) as logger:
        logger.log({"train/loss": 3.0}, step=1)
        raise RuntimeError("boom")
    (run,) = offline_runs(tmp_path / "wandb")
    assert run.exit_code == 1


def test_finish_open_loggers_closes_what_a_crashed_task_left_open(tmp_path):
    logger = tracking.RunLogger(tmp_path, _wandb(tmp_path))
    logger.log({"train/loss": 3.0}, step=1)
    tracking.finish_open_loggers(exit_code=1)
    assert not tracking._OPEN
    (run,) = offline_runs(tmp_path / "wandb")
    assert run.exit_code == 1


def test_table_rows_keep_their_images(tmp_path):
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    with tracking.RunLogger(tmp_path, None) as logger:
        logger.log_table("benchmark/samples", ["image", "answer"], [[image, "red"], [image, "blue"]], step=3)
    rows = [
        json.loads(line)
        for line in (tmp_path / "tables" / "benchmark_samples_3.jsonl").read_text().splitlines()
    ]
    assert [r["answer"] for r in rows] == ["red", "blue"]
    saved = Image.open(tmp_path / "tables" / rows[0]["image"])
    assert saved.size == (8, 8) and saved.getpixel((0, 0)) == (255, 0, 0)


def test_wandb_table_is_logged(tmp_path):
    image = Image.new("RGB", (8, 8), (0, 255, 0))
    with tracking.RunLogger(tmp_path, _wandb(tmp_path)) as logger:
        logger.log_table("benchmark/samples", ["image", "answer"], [[image, "green"]], step=1)
    (run,) = offline_runs(tmp_path / "wandb")
    (row,) = [r for r in run.history if "benchmark/samples/_type" in r]
    assert row["benchmark/samples/_type"] == "table-file" and row["benchmark/samples/nrows"] == 1


def test_ranks_other_than_zero_log_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = tracking.build_logger(cfg=None, run_dir=tmp_path)  # cfg is not even read off rank 0
    logger.log({"train/loss": 1.0}, step=1)
    logger.finish()
    assert list(tmp_path.iterdir()) == []


def test_curves_are_skipped_without_loss_or_score(tmp_path):
    with tracking.RunLogger(tmp_path, None) as logger:
        logger.log({"perf/step_time": 0.1}, step=1)
    assert not (tmp_path / "curves.png").exists()


def test_auto_mode_is_offline_without_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = _wandb(tmp_path, mode="auto")
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def crashing_task(cfg):
    """A task that opens its W&B run and then fails, like a training job that crashes mid-way."""
    logger = tracking.RunLogger(cfg.run_dir, _wandb(cfg.run_dir))
    logger.log({"train/loss": 4.0}, step=1)
    raise RuntimeError("crashed at step 2")


def test_a_crashing_task_still_finishes_its_wandb_run(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from libra import launch

    monkeypatch.setitem(launch.TASKS, "train", f"{__name__}:crashing_task")
    with pytest.raises(RuntimeError, match="crashed at step 2"):
        launch.run_task(OmegaConf.create({"task": "train", "run_dir": str(tmp_path)}))
    assert not tracking._OPEN
    (run,) = offline_runs(tmp_path / "wandb")
    assert run.exit_code == 1 and [r["train/loss"] for r in run.history if "train/loss" in r] == [4.0]
