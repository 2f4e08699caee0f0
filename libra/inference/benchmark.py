"""`task=benchmark`: score any checkpoint on the tasks of `benchmark=`, print and save the scores.

    python run.py task=benchmark checkpoint=<run dir | export | checkpoints/step_* | release> benchmark=vqav2

`libra.benchmark.runner.evaluate` generates and scores (every rank its shard); rank 0 prints one line per
metric and writes them to `<run dir>/metrics.json`, the file sweeps read their `objective` from.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from libra.benchmark.runner import evaluate
from libra.distributed import is_main


def score_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Benchmark `cfg.checkpoint`; returns `{"benchmark/<task>/<metric>": value}` (rank 0)."""
    results = evaluate(cfg)
    if not is_main():
        return {}
    width = max((len(name) for name in results), default=10)
    print("\n".join(f"{name:<{width}}  {value:10.4f}" for name, value in results.items()), flush=True)
    path = Path(cfg.run_dir) / "metrics.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"scores written to {path}", flush=True)
    return results
