"""``curves.png``: the curves of one run, drawn from its ``metrics.jsonl`` when the run's logger finishes.

One panel per family, each on its own scale: the losses (train and validation), the learning rate,
the gradient norm, the throughput, and one panel per benchmark score, from 0, with the score of its
trivial baseline (``baseline/<task>/<metric>``) as a dashed line. Only series that carry data are
drawn: a series equal to another one is folded into it (``train/loss`` is ``train/loss_text`` in a
stage without image loss; the legend says so), and one that is all zero or has no finite value is
left out with a note in its panel. Long noisy series are smoothed (a debiased exponential moving
average) and drawn over their raw values, which stay faint behind; the learning rate, exact, is
drawn as it is. Other metrics (step time, memory, skipped samples) are in ``metrics.jsonl`` and in
W&B, not here.

    panels = plot_curves("<run dir>/metrics.jsonl", "<run dir>/curves.png")
    [(p.title, [line.label for line in p.lines]) for p in panels]   # what was drawn
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Drawn in this order; the first of two equal series keeps its place, the other one is folded into it.
LOSSES = (
    "train/loss",
    "train/loss_text",
    "train/loss_image",
    "eval/loss",
    "eval/loss_text",
    "eval/loss_image",
)
SINGLE_PANELS = {  # metric -> panel title
    "train/lr": "learning rate",
    "train/grad_norm": "gradient norm (before clipping)",
    "perf/tokens_per_s": "throughput (tokens/s)",
}
EXACT = ("train/lr",)  # the schedule itself, not a noisy measurement: never smoothed
MARKERS_UP_TO = 10  # a series of this few points is drawn as points (evaluations, benchmarks)
SMOOTH_FROM = 20  # shorter series are drawn raw
SMOOTH_WINDOW = 0.05  # of the series' points (a debiased EMA; weight capped at 0.98)


@dataclass
class Line:
    """One curve of a panel: ``steps``/``values`` as logged (finite points only)."""

    name: str  # metric name, e.g. train/loss
    label: str  # legend text
    steps: list[int]
    values: list[float]
    dashed: bool = False  # a baseline: a constant drawn across the panel
    smooth: bool = True  # drawn as an EMA over its faint raw values (when long enough)


@dataclass
class Panel:
    title: str
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # series left out, and why


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> list[Panel]:
    """Draw ``out_path`` from the records of ``metrics_path``; returns the panels drawn.

    Nothing is written (and [] returned) when the file is missing or holds none of the metrics above.
    """
    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return []
    with open(metrics_path) as f:
        panels = curve_panels(json.loads(line) for line in f if line.strip())
    if panels:
        draw(panels, out_path)
    return panels


def curve_panels(records: Iterable[Mapping[str, float]]) -> list[Panel]:
    """The panels of ``curves.png`` for these ``metrics.jsonl`` records (no drawing)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for name, value in record.items():
            if name in ("step", "time") or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(name, ([], []))
            steps.append(int(record["step"]))
            values.append(float(value))

    panels = [_losses(series)]
    panels += [_single(series, name, title) for name, title in SINGLE_PANELS.items()]
    scores = sorted(n for n in series if n.startswith("benchmark/") and n.count("/") == 2)
    panels += [_score(series, name) for name in scores]
    return [p for p in panels if p.lines]


def _losses(series) -> Panel:
    panel = Panel("loss")
    kept: list[Line] = []
    for name in LOSSES:
        if name not in series:
            continue
        line = _line(name, *series[name], panel)
        if line is None:
            continue
        twin = next((k for k in kept if _same(k, line)), None)
        if twin is not None:  # e.g. loss == loss_text: no image loss in this stage
            twin.label += f" (= {name})"
            continue
        kept.append(line)
    panel.lines = kept
    return panel


def _single(series, name: str, title: str) -> Panel:
    panel = Panel(title)
    line = _line(name, *series[name], panel) if name in series else None
    if line is not None:
        line.smooth = name not in EXACT
        panel.lines = [line]
    return panel


def _score(series, name: str) -> Panel:
    _, task, metric = name.split("/")
    panel = Panel(f"{task} {metric}")
    line = _line(name, *series[name], panel, drop_zero=False)  # a score of 0 is a result
    if line is None:
        return panel
    line.label = "model"
    panel.lines.append(line)
    baseline = f"baseline/{task}/{metric}"
    finite = [v for v in series.get(baseline, ([], []))[1] if math.isfinite(v)]
    if finite:  # the baseline scored at the end of the run
        panel.lines.append(Line(baseline, "baseline", [], [finite[-1]], dashed=True))
    else:
        panel.notes.append(f"no {baseline} logged")
    return panel


def _line(name: str, steps: list[int], values: list[float], panel: Panel, drop_zero: bool = True):
    """The finite points of a series as a Line, or None (with a note in the panel) if none is left."""
    points = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    if not points:
        panel.notes.append(f"{name}: no finite value")
        return None
    if drop_zero and all(v == 0 for _, v in points):
        panel.notes.append(f"{name}: always 0")
        return None
    kept_steps, kept_values = (list(t) for t in zip(*points))
    return Line(name, name, kept_steps, kept_values)


def _same(a: Line, b: Line) -> bool:
    return a.steps == b.steps and all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a.values, b.values)
    )


def ema(values: list[float]) -> list[float]:
    """Debiased exponential moving average over about 5% of the series (2 points of 40, 20 of 400,
    at most 50): debiased, so the first values are not pulled towards zero; short series unchanged."""
    if len(values) < SMOOTH_FROM:
        return list(values)
    weight = min(0.98, 1 - 1 / (SMOOTH_WINDOW * len(values)))
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def _color(name: str, index: int) -> str:
    """A loss part has one colour in train and eval (eval: dotted, square points); others by order."""
    split, _, part = name.partition("/")
    parts = [loss.split("/")[1] for loss in LOSSES[:3]]
    return f"C{parts.index(part)}" if split in ("train", "eval") and part in parts else f"C{index}"


def draw(panels: list[Panel], out_path: str | Path) -> Path:
    """Render the panels in a grid of at most three columns; all panels share the step axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display and in worker processes
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    last_step = max(s for p in panels for line in p.lines for s in line.steps)
    for ax, panel in zip(axes.flat, panels):
        for i, line in enumerate(panel.lines):
            color, label = _color(line.name, i), f"{line.label}: {line.values[-1]:.4g}"
            if line.dashed:
                ax.axhline(line.values[0], color="0.35", linestyle="--", linewidth=1.2, label=label)
            elif line.name.startswith("eval/"):  # few points, on top of the train curve of its colour
                ax.plot(
                    line.steps, line.values, color=color, marker="s", linestyle=":", zorder=3, label=label
                )
            elif len(line.steps) <= MARKERS_UP_TO:
                ax.plot(line.steps, line.values, color=color, marker="o", label=label)
            elif line.smooth and len(line.steps) >= SMOOTH_FROM:
                ax.plot(line.steps, line.values, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(line.steps, ema(line.values), color=color, linewidth=1.6, label=label)
            else:
                ax.plot(line.steps, line.values, color=color, linewidth=1.4, label=label)
        if panel.notes:
            note = "not drawn: " + "; ".join(panel.notes)
            ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color="0.4", va="bottom")
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.set_xlim(0, max(last_step, 1) * 1.02)
        if panel.title == SINGLE_PANELS["train/lr"]:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if panel.lines[0].name.startswith("benchmark/"):
            ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))  # from 0: the gap to the baseline to scale
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
