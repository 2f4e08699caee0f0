"""Two trivial baselines that the tiny run must beat by a margin: proof that the model looks at images.

* VQA: every question gets the most frequent answer of the training questions.
* Captioning: every image gets the most frequent training caption.

A baseline is a constant prediction scored by the benchmark task itself, on exactly the evaluated
items, so its numbers sit next to the model's in `metrics.json` like for like. "Training" is what the
task config's `train_split` names: the overrides of that config that read the task's training
split instead (`{split: train}` for the synthetic tasks, the train files for COCO, VQAv2, ...).
A task whose `train_split` is null (POPE, VQAv2 test-dev, GQA by default) has no majority baseline,
and neither has one whose training files are not there; both are said and skipped, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf


def most_frequent(values: Iterable[str]) -> str:
    """The commonest value; ties go to the alphabetically first, so the baseline is deterministic."""
    counts = Counter(values)
    if not counts:
        raise ValueError("most_frequent: no values")
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


class NoBaseline(Exception):
    """The task has no training split to take a majority answer from; the message says why."""


def _training_overrides(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The task's `train_split` overrides (interpolations left for the task's own config to resolve)."""
    overrides = task_cfg.get("train_split")
    if overrides is None:
        raise NoBaseline("its config names no training split (train_split: null)")
    if OmegaConf.is_config(overrides):
        return OmegaConf.to_container(overrides, resolve=False)
    return dict(overrides)


def majority_prediction(task_cfg: Mapping[str, Any]) -> str:
    """The most frequent training reference: per training item its majority reference (the VQA
    "multiple choice answer"; the one caption of a training image), then the mode over items.
    Raises ``NoBaseline`` when the task has no training split or its files cannot be read."""
    overrides = _training_overrides(task_cfg)
    try:
        # instantiate merges the overrides into a copy that keeps its place in the run's config
        items = instantiate(task_cfg, **overrides, max_items=None).items()
    except (OSError, ValueError, InstantiationException) as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if not isinstance(cause, (OSError, ValueError)):
            raise
        # missing or unreadable training files
        raise NoBaseline(f"its training split could not be read ({cause})") from error
    references = [most_frequent(item.references) for item in items if item.references]
    if not references:
        raise NoBaseline("its training split holds no answers or captions")
    return most_frequent(references)


def majority_baseline(task_cfg: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """(constant prediction, headline scores) of the majority baseline on the task's evaluated items.
    Raises ``NoBaseline`` (with the reason) for a task without one."""
    constant = majority_prediction(task_cfg)
    task = instantiate(task_cfg)
    items = task.items()
    if not task.scored(items):
        raise NoBaseline("its items have no answers to score against")
    metrics, _ = task.score(items, {item.id: constant for item in items})
    return constant, task.headline(metrics)


def baseline_table(
    benchmark_cfg: Mapping[str, Any], model_scores: Mapping[str, float]
) -> tuple[dict[str, float], list[str]]:
    """Every task's majority baseline as ``baseline/<task>/<metric>``, and the lines of the printed
    model-vs-baseline table (a task without a baseline gets a line saying so)."""
    scores: dict[str, float] = {}
    lines = [f"{'metric':<40} {'model':>9} {'baseline':>9}"]
    for name, task_cfg in benchmark_cfg.items():
        try:
            constant, headline = majority_baseline(task_cfg)
        except NoBaseline as reason:
            for key, value in model_scores.items():
                if key.startswith(f"benchmark/{name}/"):
                    lines.append(f"{key.removeprefix('benchmark/'):<40} {value:>9.3f} {'-':>9}")
            lines.append(f"  (no majority baseline for {name}: {reason})")
            continue
        for metric, value in headline.items():
            scores[f"baseline/{name}/{metric}"] = float(value)
            model_value = model_scores.get(f"benchmark/{name}/{metric}", float("nan"))
            lines.append(f"{name + '/' + metric:<40} {model_value:>9.3f} {value:>9.3f}")
        lines.append(f"  (baseline answer for {name}: {constant!r})")
    return scores, lines
