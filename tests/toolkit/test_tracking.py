"""libra.tracking: the JSONL file, W&B offline runs read back from their files, tables, curves, ranks."""

import json
import subprocess
import sys

import pytest
from launch_env import child_environ
from PIL import Image

from libra import tracking

from .conftest import ROOT
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


# ---------------------------------------------------------------------- names, groups, W&B settings


def test_run_names_come_from_the_experiment_and_its_overrides():
    assert (
        tracking.run_name("tiny", ["optimizer.lr=3e-3", "model.bridge_rank=8"])
        == "tiny/lr=3e-3,bridge_rank=8"
    )
    assert tracking.run_name("tiny", []) == "tiny"
    # how and where a job runs is not what it trains
    plumbing = [
        "experiment=tiny",
        "task=train",
        "cluster=slurm",
        "cluster.nodes=2",
        "logger.backend.mode=offline",
    ]
    assert (
        tracking.run_name("tiny", [*plumbing, "hydra.run.dir=/x", "resume=auto", "seed=3"]) == "tiny/seed=3"
    )
    # two keys ending alike stay apart; group choices and +/~ overrides keep their meaning
    shared = [
        "optimizer.lr=1e-3",
        "scheduler.lr=2e-3",
        "deepspeed=zero2",
        "+trainer.extra=1",
        "~model.init_from",
    ]
    assert tracking.run_name("tiny", shared) == (
        "tiny/optimizer.lr=1e-3,scheduler.lr=2e-3,deepspeed=zero2,extra=1,~init_from"
    )
    # paths keep their last two parts, quotes and spaces go
    name = tracking.run_name(
        "tiny", ["checkpoint=/work/outputs/tiny/2025-01-31_10-00-00/export", "prompt='a red bus'"]
    )
    assert name == "tiny/checkpoint=2025-01-31_10-00-00/export,prompt=a_red_bus"


def test_long_run_names_are_cut_and_stay_distinct():
    long_a = tracking.run_name("tiny", [f"data.field_{i}=value_{i}" for i in range(30)] + ["optimizer.lr=1"])
    long_b = tracking.run_name("tiny", [f"data.field_{i}=value_{i}" for i in range(30)] + ["optimizer.lr=2"])
    assert len(long_a) == len(long_b) == tracking.NAME_LIMIT
    assert long_a[:-7] == long_b[:-7] and long_a != long_b and long_a[-7] == "~"


def test_swept_keys_come_from_the_sweeper_params_and_the_recorded_command_line(tmp_path):
    command_line = ["trainer.max_steps=1", "optimizer.lr=1e-3,3e-3", "seed=range(0,3)"]  # what Hydra records
    (tmp_path / "multirun.yaml").write_text(json.dumps({"hydra": {"overrides": {"task": command_line}}}))
    assert tracking.swept_keys(tmp_path, None) == {"optimizer.lr", "seed"}
    assert tracking.swept_keys(tmp_path, {"model.bridge_rank": "4,8"}) == {
        "optimizer.lr",
        "seed",
        "model.bridge_rank",
    }
    assert tracking.swept_keys(
        tmp_path / "elsewhere", {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}
    ) == {"optimizer.lr"}
    assert tracking.swept_keys(tmp_path / "elsewhere", None) is None  # names then keep every override
    job = ["trainer.max_steps=1", "optimizer.lr=0.001", "seed=2"]
    assert tracking.run_name("tiny", job, tracking.swept_keys(tmp_path, None)) == "tiny/lr=0.001,seed=2"


def test_a_multirun_job_joins_its_sweeps_group_and_a_single_run_its_experiments(tmp_path):
    sweep_dir = tmp_path / "multirun" / "tiny" / "2025-01-31_10-00-00"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['seed=1', 'optimizer.lr=1e-3,3e-3']\n"
    )
    naming = dict(group="tiny", experiment="tiny", sweep_dir=str(sweep_dir))
    job = _wandb(sweep_dir / "0", overrides=["seed=1", "optimizer.lr=0.001"], **naming)
    job.finish()
    single = _wandb(tmp_path / "outputs" / "run", overrides=["seed=1", "optimizer.lr=0.001"], **naming)
    single.finish()
    explicit = _wandb(tmp_path / "named", name="my run", overrides=["seed=1"], **naming)
    explicit.finish()

    (swept,) = offline_runs(sweep_dir / "0" / "wandb")
    assert (swept.name, swept.group) == ("tiny/lr=0.001", "tiny-sweep-2025-01-31_10-00-00")
    assert swept.tags == ["tiny", "train", "sweep"]
    (run,) = offline_runs(tmp_path / "outputs" / "run" / "wandb")
    assert (run.name, run.group, run.tags) == ("tiny/seed=1,lr=0.001", "tiny", ["tiny", "train"])
    (named,) = offline_runs(tmp_path / "named" / "wandb")
    assert named.name == "my run"


CONSOLE_SCRIPT = """
import sys
from libra.tracking import WandbLogger
for folder, options in (("on", {}), ("off", {"system_metrics": False, "console": "off"})):
    logger = WandbLogger(sys.argv[1] + "/" + folder, {}, project="libra-test", mode="offline", **options)
    print(f"a line printed while the {folder} run is open", flush=True)
    logger.finish()
"""


def test_system_metrics_and_console_capture_are_on_by_default_and_can_be_turned_off(tmp_path):
    # a process of its own: W&B's console capture does not see through pytest's own capture
    env = child_environ(PYTHONPATH=str(ROOT))
    env.pop("WANDB_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a line printed while the off run is open" in done.stdout  # the terminal keeps everything
    (on,) = offline_runs(tmp_path / "on" / "wandb")
    (off,) = offline_runs(tmp_path / "off" / "wandb")
    assert on.stats_records >= 1 and "a line printed while the on run is open" in on.console
    assert off.stats_records == 0 and off.console == ""
    with pytest.raises(ValueError, match="logger.backend.console='loud'; use off, wrap, redirect"):
        _wandb(tmp_path / "bad", console="loud")


def test_summary_and_artifacts_reach_the_run_only_when_asked(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 300_000)
    with tracking.RunLogger(
        tmp_path / "a", _wandb(tmp_path / "a", upload_max_mb=0.1), log_artifacts=True
    ) as logger:
        logger.summary({"benchmark/synthetic_vqa/accuracy": 55.3, "baseline/synthetic_vqa/accuracy": 9.7})
        logger.log_artifact("export", "model", folder, step=7)
    with tracking.RunLogger(tmp_path / "b", _wandb(tmp_path / "b")) as logger:  # log_artifacts off
        logger.log_artifact("export", "model", folder, step=7)

    (run,) = offline_runs(tmp_path / "a" / "wandb")
    assert run.summary["benchmark/synthetic_vqa/accuracy"] == 55.3
    assert run.summary["baseline/synthetic_vqa/accuracy"] == 9.7
    (artifact,) = run.artifacts
    assert (artifact.name, artifact.type) == (f"export-{run.run_id}", "model")
    assert sorted(artifact.aliases) == ["latest", "step_7"] and artifact.metadata["path"] == str(folder)
    assert artifact.files["config.json"]["ref"] == ""  # small: uploaded
    big = artifact.files["model.safetensors"]
    assert big["ref"] == (folder / "model.safetensors").as_uri() and big["size"] == 300_000  # referenced
    (quiet,) = offline_runs(tmp_path / "b" / "wandb")
    assert quiet.artifacts == []


def test_bad_logger_settings_fail_validation_before_any_work(hydra_cleared):
    from libra.validation import ConfigError, validate

    from .conftest import compose_config

    validate(compose_config(["logger.backend.console=off", "logger.backend.system_metrics=false"]))
    validate(compose_config(["logger=none"]))  # no backend, nothing to check
    with pytest.raises(
        ConfigError, match=r"logger.backend.console: 'loud' is not one of wrap \| redirect \| off"
    ):
        validate(compose_config(["logger.backend.console=loud"]))
    with pytest.raises(Exception, match="logger.log_artifacts=maybe"):  # a wrong type: at composition
        compose_config(["logger.log_artifacts=maybe"])
