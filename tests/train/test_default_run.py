"""`python run.py` (the tiny experiment) from nothing: it must learn, and beat both baselines by the margins.

Data generation, tokenizer training, training and the benchmark all run here (fresh cache dir), so
the wall time printed is the whole job's (budget: 5 minutes on an idle 2-core CPU). The time is
reported, not asserted: speed is measured, never pinned by a unit test; the subprocess timeout only
guards against a hang.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_default_run_learns_beyond_the_baselines(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(
        os.environ, WANDB_MODE="offline", LIBRA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO)
    )
    env.pop("WANDB_API_KEY", None)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # set by in-process trainings of other tests; `python run.py` starts plain
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "run.py"), f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-5000:]
    print(f"default run: {wall:.0f} s wall")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    vqa, vqa_base = metrics["benchmark/synthetic_vqa/accuracy"], metrics["baseline/synthetic_vqa/accuracy"]
    cider, cider_base = (
        metrics["benchmark/synthetic_caption/CIDEr"],
        metrics["baseline/synthetic_caption/CIDEr"],
    )
    print(f"VQA accuracy {vqa:.1f} vs {vqa_base:.1f}; CIDEr {cider:.3f} vs {cider_base:.3f}")
    assert vqa >= vqa_base + 20, metrics
    assert cider >= 2 * cider_base, metrics
