"""perf/gpu_check.sh --cpu: the one-command GPU check runs end to end (tiny dimensions, CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_writes_every_figure(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "perf" / "gpu_check.sh"), "--cpu", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    figures = record["figures"]
    for key in (
        "train_step_vs_llama_a", "train_step_vs_llama_b", "decode_tokens_per_s_batch1",
        "decode_tokens_per_s_batch8", "decode/llama/batch1", "decode/ours-static/batch8_vs_llama",
    ):  # fmt: skip
        assert figures[key] > 0, key
    # the text-decoding cache is exactly LLaMA's size (the reference keeps twice that)
    for variant in ("ours", "ours-static"):
        for batch in (1, 8):
            assert figures[f"kv_cache_vs_llama/{variant}/batch{batch}"] == 1.0
    assert set(record["meets_target"]) <= set(record["targets"])
    assert record["mode"].startswith("cpu")
    shapes = record["parts"]["train"]["shapes"]
    assert shapes["a"]["models"]["ours"]["flops_per_step"] < shapes["a"]["models"]["llama"]["flops_per_step"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| train step time vs LLaMA, shape (a) 8 x 650 |" in table
    assert "| decode tokens/s, batch 8 |" in table


def test_gpu_check_refuses_a_missing_folder_argument():
    done = subprocess.run(["bash", str(ROOT / "perf" / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
