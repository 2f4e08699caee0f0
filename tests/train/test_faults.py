"""Fault injection on `python run.py` (tiny model, real code path, one subprocess per job): non-finite
steps, stop signals, SLURM requeue, two jobs into one run dir, kill -9, malicious and incomplete
checkpoint files, micro-batches with no usable sample, and a bounded chaos run that is killed at
random moments and still ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from launch_env import child_environ
from safetensors.torch import load_file

from libra.durable_files import write_manifest
from libra.exit_codes import NON_FINITE, PREEMPTED, read_stop_record
from libra.run_lock import LOCK_FILE
from libra.safe_load import safe_torch_load
from libra.train.checkpoint import list_checkpoints, scan_checkpoints

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# hidden 32, 2 layers, 2 micro-batches of 2 per step, 48 synthetic images: ~0.1 s a step
TINY = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "trainer.global_batch_size=4",
    "trainer.micro_batch_size=2",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.num_workers=0",
    "trainer.benchmark_at_end=false",
    "synthetic.train_images=48",
    "synthetic.val_images=8",
    "synthetic.test_images=8",
    "synthetic.images_per_shard=48",
    "logger=none",
]
LONG = ["trainer.max_steps=100000"]  # still running when the signal comes


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """One synthetic-data / tiny-tokenizer cache for every job of this module."""
    values = child_environ(WANDB_MODE="offline", HYDRA_FULL_ERROR="1", PYTHONPATH=str(ROOT))
    values.update(OMP_NUM_THREADS="1", LIBRA_CACHE_DIR=str(tmp_path_factory.mktemp("libra-cache")))
    values.pop("WANDB_API_KEY", None)
    return values


def start(args: list[str], run_dir: Path, env: dict, command: list[str] | None = None) -> subprocess.Popen:
    """A job in the background; its output goes to <run dir>.out (a pipe could fill up and block it)."""
    command = command or [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"]
    out = open(run_dir.with_name(run_dir.name + ".out"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, cwd=run_dir.parent, env=env, stdout=out, stderr=subprocess.STDOUT)


def run(args: list[str], run_dir: Path, env: dict, timeout: float = 300) -> tuple[int, str]:
    """A job in the foreground: (exit code, its output)."""
    process = start(args, run_dir, env)
    process.wait(timeout=timeout)
    return process.returncode, run_dir.with_name(run_dir.name + ".out").read_text()


def output(run_dir: Path) -> str:
    return run_dir.with_name(run_dir.name + ".out").read_text()


def train_rows(run_dir: Path) -> dict[int, dict]:
    """The train rows of metrics.jsonl by step; fails on a step logged twice."""
    rows: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if "train/loss" in row:
            assert row["step"] not in rows, f"step {row['step']} logged twice in {path}"
            rows[row["step"]] = row
    return rows


def wait_for_rows(run_dir: Path, process: subprocess.Popen, count: int = 1, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(_rows_so_far(run_dir)) < count:
        assert process.poll() is None, (
            f"the job ended ({process.returncode}) early:\n{output(run_dir)[-3000:]}"
        )
        assert time.monotonic() < deadline, "no metrics row in time"
        time.sleep(0.05)


def _rows_so_far(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    try:
        return [line for line in path.read_text().splitlines() if '"train/loss"' in line]
    except OSError:
        return []


def module_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(checkpoint / "mp_rank_00_model_states.pt")["module"]


def assert_finite(tensors: dict[str, torch.Tensor]) -> None:
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, f"non-finite weights: {bad[:5]}"


# ---------------------------------------------------------------------- non-finite steps


def test_non_finite_steps_change_nothing_and_stop_the_run(tmp_path, env):
    run_dir = tmp_path / "diverged"
    args = [*TINY, "optimizer.lr=1e6", "trainer.max_steps=30", "trainer.checkpoint_every=1"]
    code, out = run([*args, "trainer.keep_last=1", "trainer.max_bad_steps=3"], run_dir, env)
    assert code == NON_FINITE, out[-3000:]
    record = read_stop_record(run_dir)
    stop, first_bad = record["step"], record["first_bad_step"]
    assert stop - first_bad + 1 == 3 and first_bad >= 2
    assert f"STOPPED: 3 steps in a row (steps {first_bad}-{stop})" in out
    rows = train_rows(run_dir)
    assert sorted(rows) == list(range(1, stop + 1))  # every step logged once, bad ones included
    for step in range(first_bad, stop + 1):
        assert not math.isfinite(rows[step]["train/loss"])  # logged as it was, not as 0.0
        assert rows[step]["train/bad_steps"] == step - first_bad + 1
    assert math.isfinite(rows[first_bad - 1]["train/loss"]) and rows[first_bad - 1]["train/bad_steps"] == 0
    # keep_last=1 kept the newest checkpoint and, besides it, the newest good one
    good = run_dir / "checkpoints" / f"step_{first_bad - 1:06d}"
    names = [c.name for c in list_checkpoints(run_dir)]
    assert names == [good.name, f"step_{stop - 1:06d}"]
    assert record["last_good_checkpoint"] == str(good)
    for checkpoint in list_checkpoints(run_dir):
        assert_finite(module_weights(checkpoint))
    # the refused steps did not move a single weight
    before, after = module_weights(good), module_weights(run_dir / "checkpoints" / names[-1])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (run_dir / "export").exists()


# ---------------------------------------------------------------------- stop signals


def test_sigterm_checkpoints_finishes_wandb_and_resume_continues(tmp_path, env):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.checkpoint_every=0", "logger=wandb"]
    job = start([*args, *LONG], run_dir, env)
    wait_for_rows(run_dir, job)
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=120)
    assert job.returncode == PREEMPTED, output(run_dir)[-3000:]
    record = read_stop_record(run_dir)
    stop = record["step"]
    assert record["signal"] == "SIGTERM" and not record["requeue"]
    assert [c.name for c in list_checkpoints(run_dir)] == [f"step_{stop:06d}"]  # complete, that step
    assert sorted(train_rows(run_dir)) == list(range(1, stop + 1))
    assert not (run_dir / LOCK_FILE).exists()
    wandb = _wandb_files()
    (first,) = wandb.offline_runs(run_dir)
    assert first.exit_code == PREEMPTED  # the W&B run was finished, not left running

    code, out = run([*args, "resume=auto", f"trainer.max_steps={stop + 2}"], run_dir, env)
    assert code == 0, out[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stop:06d}'} at step {stop}" in out
    assert sorted(train_rows(run_dir)) == list(range(1, stop + 3))  # one row per step
    assert read_stop_record(run_dir) is None
    runs = wandb.offline_runs(run_dir)
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id  # the same W&B run continued
    assert {r.exit_code for r in runs} == {PREEMPTED, 0}


@pytest.mark.distributed
def test_sigterm_to_a_two_rank_torchrun_job_checkpoints_and_exits_75(tmp_path, env):
    """`cluster=torchrun`: the signal reaches run.py, which hands it to the ranks once; both finish the
    step, checkpoint it, and run.py exits with the ranks' code, not torchrun's 1."""
    run_dir = tmp_path / "run"
    with socket.socket() as probe:  # a free port (this process may hold 29500 + pid % 1000 itself)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    two_ranks = ["cluster=torchrun", "cluster.gpus_per_node=2", f"cluster.master_port={port}"]
    args = [*TINY, *two_ranks, "trainer.global_batch_size=4", "trainer.checkpoint_every=0", *LONG]
    job = start(args, run_dir, env)
    wait_for_rows(run_dir, job)
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=180)
    assert job.returncode == PREEMPTED, output(run_dir)[-3000:]
    stop = read_stop_record(run_dir)["step"]
    assert [c.name for c in list_checkpoints(run_dir)] == [f"step_{stop:06d}"]
    states = {p.name for p in (run_dir / "checkpoints" / f"step_{stop:06d}").glob("train_state_rank*")}
    assert states == {"train_state_rank0.pt", "train_state_rank1.pt"}  # both ranks wrote their state


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_other_stop_signals_checkpoint_the_step_they_stop_at(tmp_path, env, sig):
    run_dir = tmp_path / "run"
    job = start([*TINY, *LONG, "trainer.checkpoint_every=0"], run_dir, env)
    wait_for_rows(run_dir, job)
    job.send_signal(sig)
    job.wait(timeout=120)
    assert job.returncode == PREEMPTED, output(run_dir)[-3000:]
    record = read_stop_record(run_dir)
    assert record["signal"] == sig.name and not record["requeue"]  # no SLURM: nothing to requeue
    assert [c.name for c in list_checkpoints(run_dir)] == [f"step_{record['step']:06d}"]
    assert sorted(train_rows(run_dir)) == list(range(1, record["step"] + 1))


def test_slurm_job_requeues_itself_on_usr2_and_resumes_in_the_same_run_dir(tmp_path, env):
    from conftest import compose_experiment
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    try:
        cfg = compose_experiment("tiny", run_dir, [*TINY, *LONG, "trainer.checkpoint_every=0"])
        plain = OmegaConf.to_container(cfg, resolve=True)
    finally:
        HydraConfig.instance().cfg = None
    del plain["hydra"]
    plain["cluster"]["launcher"] = "slurm"  # what a task of a cluster=slurm job runs with
    run_dir.mkdir()
    config = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create(plain), config)
    fake_bin, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (fake_bin / "scontrol").chmod(0o755)
    slurm = dict(env, PATH=f"{fake_bin}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="4242")
    command = [sys.executable, "-m", "libra.launch", str(config)]

    job = start([], run_dir, slurm, command=command)
    wait_for_rows(run_dir, job)
    job.send_signal(signal.SIGUSR2)  # what SLURM sends before the time limit (--signal=USR2@120)
    job.wait(timeout=120)
    assert job.returncode == PREEMPTED, output(run_dir)[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    record = read_stop_record(run_dir)
    stop = record["step"]
    assert record["requeue"] and "requeued SLURM job 4242" in output(run_dir)

    # the requeued job: same command, SLURM counts the restart, resume stays null in the config
    plain["trainer"]["max_steps"] = stop + 2
    OmegaConf.save(OmegaConf.create(plain), config)
    job = start([], run_dir, dict(slurm, SLURM_RESTART_COUNT="1"), command=command)
    job.wait(timeout=300)
    assert job.returncode == 0, output(run_dir)[-3000:]
    assert f"at step {stop}" in output(run_dir) and "requeued SLURM job (restart 1): resume=auto" in output(
        run_dir
    )
    assert sorted(train_rows(run_dir)) == list(range(1, stop + 3))
    assert calls.read_text().split() == ["requeue", "4242"]  # not requeued again


# ---------------------------------------------------------------------- one job per run dir, kill -9


def test_second_job_is_refused_and_a_killed_jobs_lock_is_taken_over(tmp_path, env):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.checkpoint_every=5", "trainer.keep_last=2"]
    first = start([*args, *LONG], run_dir, env)
    wait_for_rows(run_dir, first)
    # the first job's records, Hydra's included: the second job must write none of them
    records = [run_dir / name for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml")]
    written = [path.stat().st_mtime_ns for path in records]
    second = run_dir.with_name("second")
    code, out = _second_job(args, run_dir, second, env)
    assert code != 0
    assert f"run dir {run_dir} is in use by another job: pid {first.pid}" in out
    assert [path.stat().st_mtime_ns for path in records] == written  # the second job wrote nothing
    assert first.poll() is None
    first.send_signal(signal.SIGKILL)  # kill -9: the lock stays behind
    first.wait(timeout=60)
    assert (run_dir / LOCK_FILE).exists()
    last = int(list_checkpoints(run_dir)[-1].name.split("_")[1])
    assert len(train_rows(run_dir)) >= last  # rows after the newest checkpoint are there, to be dropped

    code, out = run([*args, "resume=auto", f"trainer.max_steps={last + 2}"], run_dir, env)
    assert code == 0, out[-3000:]
    assert f"took over {run_dir / LOCK_FILE} from pid {first.pid}" in out and "no longer runs" in out
    assert sorted(train_rows(run_dir)) == list(range(1, last + 3))  # one row per step
    assert not (run_dir / LOCK_FILE).exists()


def _second_job(args: list[str], run_dir: Path, log: Path, env: dict) -> tuple[int, str]:
    """The same command into the same run dir, its output kept apart from the first job's."""
    command = [sys.executable, str(ROOT / "run.py"), *args, "trainer.max_steps=3", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    log.write_text(result.stdout + result.stderr)
    return result.returncode, result.stdout + result.stderr


# ---------------------------------------------------------------------- checkpoint files


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory, env) -> Path:
    """A finished run with a complete checkpoint after each of its 3 steps."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    code, out = run(
        [*TINY, "trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_last=5"], run_dir, env
    )
    assert code == 0, out[-3000:]
    assert [c.name for c in list_checkpoints(run_dir)] == ["step_000001", "step_000002", "step_000003"]
    return run_dir


class Payload:
    """A pickle that runs a shell command when it is loaded with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["train_state_rank0.pt", "mp_rank_00_model_states.pt"])
def test_a_malicious_checkpoint_file_is_refused_without_running(tmp_path, env, three_steps, victim):
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    step = run_dir / "checkpoints" / "step_000002"
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"module": {}, "payload": Payload(marker)}, step / victim)
    write_manifest(step, step=2, world_size=1, bad_streak=0)  # an attacker keeps the folder "complete"
    code, out = run([*TINY, f"resume={step}", "trainer.max_steps=4"], run_dir, env)
    assert code != 0
    assert f"refused to load {step / victim}" in out
    assert not marker.exists()


def test_resume_skips_incomplete_checkpoints_and_says_why(tmp_path, env, three_steps):
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    checkpoints = run_dir / "checkpoints"
    (checkpoints / "step_000002").rename(checkpoints / "step_000002.old")  # killed mid-replacement
    states = checkpoints / "step_000003" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:-100])  # cut short
    (checkpoints / "step_000004.tmp").mkdir()  # killed while writing
    (checkpoints / "step_000004.tmp" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    args = [*TINY, "resume=auto", "trainer.max_steps=4", "trainer.checkpoint_every=1", "trainer.keep_last=5"]
    code, out = run(args, run_dir, env)
    assert code == 0, out[-3000:]
    assert "skipped" in out and "step_000003: mp_rank_00_model_states.pt has" in out
    assert "step_000004.tmp: never finished writing" in out
    assert f"resumed from {checkpoints / 'step_000002.old'} at step 2" in out
    complete, leftovers = scan_checkpoints(run_dir)
    # step 3 written again, step 2 back under its name
    assert [c.name for c in complete] == ["step_000001", "step_000002", "step_000003", "step_000004"]
    assert not [p for p, _ in leftovers if p.name.endswith((".tmp", ".old"))]
    expected, got = train_rows(three_steps), train_rows(run_dir)
    assert sorted(got) == [1, 2, 3, 4]
    assert got[3]["train/loss"] == expected[3]["train/loss"]  # the same step again, bit for bit


def test_resume_with_another_zero_stage_is_refused_naming_it(tmp_path, env, three_steps):
    """A stage-0 checkpoint has no ZeRO optimizer shards: ZeRO-2 looked for them deep in DeepSpeed
    (FileNotFoundError), and a ZeRO-2 checkpoint in stage 0 failed on a None optimizer state."""
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    code, out = run([*TINY, "resume=auto", "trainer.max_steps=4", "deepspeed=zero2"], run_dir, env)
    assert code != 0
    step = run_dir / "checkpoints" / "step_000003"
    assert (
        f"cannot resume from {step}: it was written with ZeRO stage 0 and this run has deepspeed.stage=2"
        in out
    )
    assert sorted(train_rows(run_dir)) == [1, 2, 3]  # nothing trained


def test_resume_with_other_model_dimensions_is_refused_naming_them(tmp_path, env, three_steps):
    """Other model dimensions failed in DeepSpeed's load_state_dict with a list of size mismatches
    that named no setting; the refusal names each setting with the value to resume with."""
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    args = [*TINY, "resume=auto", "trainer.max_steps=4", "model.hidden_size=64", "model.num_hidden_layers=3"]
    code, out = run(args, run_dir, env)
    assert code != 0
    assert (
        "it holds a model of another shape (hidden_size=32 there, 64 here, num_hidden_layers=2 there, "
        "3 here); resume with the settings it was written with: model.hidden_size=32 "
        "model.num_hidden_layers=2"
    ) in out
    assert "size mismatch" not in out
    assert sorted(train_rows(run_dir)) == [1, 2, 3]  # nothing trained


@pytest.mark.parametrize(
    "change, said",
    [
        # loading restored the saved optimizer, whose lr silently won over the new one
        (
            "optimizer.lr=1e-05",
            r"its optimizer state holds other settings \(optimizer.lr: \S+ there, 1e-05 here",
        ),
        # these failed deep in DeepSpeed (KeyError: 'dynamic_loss_scale') and torch (parameter groups)
        ("trainer.precision=bf16", "it was written with trainer.precision=fp32 and this run has bf16"),
        ("trainer.freeze_language=true", r"its optimizer has \d+ parameter groups and this run's \d+"),
    ],
)
def test_resume_with_other_optimizer_settings_is_refused_naming_them(
    tmp_path, env, three_steps, change, said
):
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    code, out = run([*TINY, "resume=auto", "trainer.max_steps=4", change], run_dir, env)
    assert code != 0 and re.search(said, out), out[-3000:]
    assert sorted(train_rows(run_dir)) == [1, 2, 3]  # nothing trained


def test_a_fresh_run_into_a_run_dir_with_checkpoints_is_refused(tmp_path, env, three_steps):
    """Without resume=, its checkpoints mixed with the earlier run's and pruning (highest steps kept)
    deleted the new ones; its metrics.jsonl was cut back to step 0."""
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    code, out = run([*TINY, "trainer.max_steps=2", "trainer.keep_last=1"], run_dir, env)
    assert code != 0
    assert "holds the checkpoints of an earlier run (newest: step_000003); fix: resume=auto" in out
    assert sorted(train_rows(run_dir)) == [1, 2, 3]
    assert [c.name for c in list_checkpoints(run_dir)] == ["step_000001", "step_000002", "step_000003"]


def test_model_files_of_an_attempt_that_failed_before_its_first_checkpoint_are_replaced(tmp_path, env):
    run_dir = tmp_path / "run"
    code, _ = run([*TINY, "trainer.max_steps=1", "data.train.split=trian"], run_dir, env)  # fails early
    assert code != 0 and (run_dir / "model_files" / "config.json").is_file()
    code, out = run(
        [*TINY, "model.hidden_size=64", "trainer.max_steps=1", "trainer.checkpoint_every=1"], run_dir, env
    )
    assert code == 0, out[-3000:]
    assert json.loads((run_dir / "model_files" / "config.json").read_text())["hidden_size"] == 64


def test_resume_past_max_steps_is_refused(tmp_path, env, three_steps):
    """A checkpoint of step 3 resumed with trainer.max_steps=2 ran no step and exported the step-3
    weights as the run's result, exit 0."""
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    (run_dir / "export").rename(run_dir / "export.first")
    code, out = run([*TINY, "resume=auto", "trainer.max_steps=2"], run_dir, env)
    assert code != 0
    step = run_dir / "checkpoints" / "step_000003"
    assert f"resume: {step} is at step 3, past trainer.max_steps=2; fix: trainer.max_steps=3" in out
    assert not (run_dir / "export").exists()


# ---------------------------------------------------------------------- data faults


def test_micro_batches_with_no_usable_sample_are_skipped_and_counted(tmp_path, env, three_steps):
    """8 LLaVA entries, 7 of them with a missing image; the sampler's order puts the good one last,
    so the first three micro-batches of the run have no sample at all."""
    (layout,) = Path(env["LIBRA_CACHE_DIR"]).glob("synthetic-shapes-*")
    entries = [
        e for e in json.loads((layout / "llava" / "llava_instruct_train.json").read_text()) if "image" in e
    ]
    entries = entries[:8]
    order = list(range(8))
    random.Random("42/0").shuffle(order)  # ResumableSampler, seed 42 (conf/config.yaml), epoch 0
    for i, entry in enumerate(entries):
        if i != order[-1]:
            entry["image"] = f"missing/{i}.png"
    annotations = tmp_path / "llava.json"
    annotations.write_text(json.dumps(entries))
    data = [
        "data=llava_instruct",
        f"data.annotation_file={annotations}",
        f"data.image_roots=[{layout / 'images'}]",
    ]
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        *data,
        "data.train.image_token_count=18",
        "trainer.global_batch_size=2",
        "trainer.max_steps=2",
    ]
    code, out = run(args, run_dir, env)
    assert code == 0, out[-3000:]
    rows = train_rows(run_dir)
    assert sorted(rows) == [1, 2]
    assert rows[1]["data/skipped/empty_micro_batch"] == 3
    assert rows[1]["data/skipped/missing_image"] == 7
    assert math.isfinite(rows[1]["train/loss"])


# ---------------------------------------------------------------------- chaos


def test_killed_at_random_moments_ends_as_the_uninterrupted_run(tmp_path, env):
    args = [*TINY, "trainer.max_steps=8", "trainer.checkpoint_every=1", "trainer.keep_last=2", "resume=auto"]
    reference = tmp_path / "reference"
    code, out = run(args, reference, env)
    assert code == 0, out[-3000:]

    chaos, rng, killed_running = tmp_path / "chaos", random.Random(11), 0
    for _ in range(3):
        job = start(args, chaos, env)
        rows_before = len(_rows_so_far(chaos))
        while job.poll() is None and len(_rows_so_far(chaos)) <= rows_before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere in a step, a checkpoint save, or a rename
        killed_running += job.poll() is None
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=60)
    assert killed_running >= 1  # the kills hit a running job, not one that had finished
    code, out = run(args, chaos, env)
    assert code == 0, out[-3000:]

    expected, got = train_rows(reference), train_rows(chaos)
    assert sorted(got) == list(range(1, 9))  # one row per step, whatever was redone
    assert [got[s]["train/loss"] for s in got] == [expected[s]["train/loss"] for s in expected]
    a, b = (
        load_file(reference / "export" / "model.safetensors"),
        load_file(chaos / "export" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (reference / "export" / "model.safetensors").read_bytes() == (
        chaos / "export" / "model.safetensors"
    ).read_bytes()
    assert_finite(b)


def _wandb_files():
    """tests/toolkit/wandb_files.py (the offline W&B reader of the toolkit tests)."""
    spec = importlib.util.spec_from_file_location(
        "wandb_files", ROOT / "tests" / "toolkit" / "wandb_files.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
