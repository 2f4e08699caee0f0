"""Two trivial baselines that the tiny run must beat by a margin: proof that the model looks at images.

* VQA: every question gets the most frequent answer of the training questions.
* Captioning: every image gets the most frequent training caption.

A baseline is a constant prediction scored by the benchmark task itself, on exactly the evaluated
items, so its numbers sit next to the model's in `metrics.json` like for like. "Training" is the
task's own `train` split (the synthetic set has one for every benchmark split).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.utils import instantiate


def most_frequent(values: Iterable[str]) -> str:
    """The commonest value; ties go to the alphabetically first, so the baseline is deterministic."""
    counts = Counter(values)
    if not counts:
        raise ValueError("most_frequent: no values")
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def majority_prediction(task_cfg: Mapping[str, Any]) -> str:
    """The most frequent training reference: per training item its majority reference (the VQA
    "multiple choice answer"; the one caption of a training image), then the mode over items."""
    train_task = instantiate(task_cfg, split="train", max_items=None)
    return most_frequent(most_frequent(item.references) for item in train_task.items() if item.references)


def majority_baseline(task_cfg: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """(constant prediction, headline scores) of the majority baseline on the task's evaluated items."""
    constant = majority_prediction(task_cfg)
    task = instantiate(task_cfg)
    items = task.items()
    metrics, _ = task.score(items, {item.id: constant for item in items})
    return constant, task.headline(metrics)
