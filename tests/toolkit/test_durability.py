"""The pieces that make runs survive faults, each with the fault injected at its worst moment: a
folder replacement killed between its renames, a cut-short file, the run-dir lock against live,
dead and recycled holders, metrics rows of an interrupted run, and a pickle with a payload."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from libra import run_lock
from libra.durable_files import IncompleteFolder, read_manifest, replace_folder, write_manifest
from libra.safe_load import DamagedFileError, UnsafePickleError, safe_torch_load, safe_unpickling
from libra.tracking import read_metrics, truncate_metrics


def _folder(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "weights.bin").write_text(content)
    write_manifest(path, step=1)
    return path


def test_replacing_a_folder_always_leaves_a_complete_copy(tmp_path, monkeypatch):
    from libra.train.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    final = _folder(root / "step_000001", "old")
    new = _folder(root / "step_000001.tmp", "new")
    real_rename, calls = Path.rename, []

    def rename_then_die(self, target):
        calls.append(target)
        if len(calls) == 2:  # the old copy is aside, the new one not yet in: the worst moment
            raise KeyboardInterrupt("killed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(new, final)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not final.exists()
    found = latest_checkpoint(tmp_path)  # the resolver still finds a complete step 1
    assert found.name == "step_000001.old" and (found / "weights.bin").read_text() == "old"
    replace_folder(new, final)  # the next save of that step completes the replacement
    assert (final / "weights.bin").read_text() == "new" and not found.exists()


def test_a_cut_short_or_missing_file_makes_a_folder_incomplete(tmp_path):
    folder = _folder(tmp_path / "step", "0123456789")
    assert read_manifest(folder)["step"] == 1
    (folder / "weights.bin").write_text("01234")
    with pytest.raises(IncompleteFolder, match="weights.bin has 5 bytes, the manifest says 10"):
        read_manifest(folder)
    (folder / "weights.bin").unlink()
    with pytest.raises(IncompleteFolder, match="weights.bin is missing"):
        read_manifest(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(IncompleteFolder, match="no manifest.json"):
        read_manifest(folder)


def _write_lock(run_dir: Path, **holder) -> Path:
    run_dir.mkdir(exist_ok=True)
    path = run_dir / run_lock.LOCK_FILE
    values = {"host": socket.gethostname(), "started": "earlier", "command": "python run.py"}
    path.write_text(json.dumps({**values, **holder}))
    return path


def test_the_lock_refuses_a_live_holder_and_names_it(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = run_lock._process_start(sleeper.pid)
        _write_lock(tmp_path, pid=sleeper.pid, process_start=start, slurm_job_id=None)
        with pytest.raises(run_lock.RunDirBusy, match=f"in use by another job: pid {sleeper.pid} on "):
            run_lock.acquire(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("case", ["dead pid", "reused pid", "same slurm job"])
def test_the_lock_of_a_gone_holder_is_taken_over_with_a_warning(tmp_path, capsys, monkeypatch, case):
    if case == "dead pid":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        holder = {"pid": gone.pid, "process_start": None, "slurm_job_id": None}
        reason = "no longer runs"
    elif case == "reused pid":  # our parent runs, but started at another time than the holder did
        holder = {"pid": os.getppid(), "process_start": "1", "slurm_job_id": None}
        reason = "the pid was reused"
    else:  # requeued: another node, the same job id
        monkeypatch.setenv("SLURM_JOB_ID", "777")
        holder = {"pid": 1, "host": "another-node", "process_start": None, "slurm_job_id": "777"}
        reason = "earlier run of this SLURM job"
    _write_lock(tmp_path, **holder)
    with run_lock.hold_run_dir(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert reason in capsys.readouterr().err
    assert not path.exists()  # released at the end


def test_metrics_of_an_interrupted_run_are_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "train/loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(rows) + '\n{"step": 5, "train/lo')  # a kill cut the last line
    assert truncate_metrics(path, 2) == 3
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_a_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"weight": torch.ones(2), "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="refused to load .*evil.pt"):
        safe_torch_load(tmp_path / "evil.pt")
    with safe_unpickling(), pytest.raises(UnsafePickleError):  # a library's own weights_only=False
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert not marker.exists()
    torch.save({"weight": torch.ones(2)}, tmp_path / "plain.pt")
    assert torch.equal(safe_torch_load(tmp_path / "plain.pt")["weight"], torch.ones(2))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: data[: len(data) // 2],
        lambda data: (
            data[: len(data) // 2] + bytes(len(data) - len(data) // 2)
        ),  # same size: the manifest agrees
        lambda data: bytes(range(1, 256)) * 16,  # overwritten: the unpickler refuses it as unsafe
    ],
    ids=["empty", "cut_short", "tail_zeroed", "other_bytes"],
)
def test_a_damaged_torch_file_is_named(tmp_path, damage):
    """torch's errors for these ('[Errno 22] Invalid argument', 'PytorchStreamReader failed reading zip
    archive', a bare EOFError) name no file; inside DeepSpeed's loader nothing else would."""
    torch.save({"weight": torch.ones(64, 64), "step": 3}, tmp_path / "state.pt")
    file = tmp_path / "state.pt"
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(
        DamagedFileError, match=f"{file} is not a readable torch file .*cut short or overwritten"
    ):
        safe_torch_load(file)
    with safe_unpickling(), pytest.raises(DamagedFileError, match=f"{file} is not a readable torch file"):
        torch.load(file, weights_only=False)
    with pytest.raises(FileNotFoundError):  # a missing file stays what it is
        safe_torch_load(tmp_path / "missing.pt")
