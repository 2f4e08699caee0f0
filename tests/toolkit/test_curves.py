"""libra.curves: curves.png from a recorded metrics.jsonl draws only the series that carry data, one
panel per family, scores with their baselines; checked on the panels drawn and on the PNG itself."""

from __future__ import annotations

import json
import math
import random

from PIL import Image

from libra.curves import ema, plot_curves


def recorded_run(image_loss: bool, steps: int = 300, log_every: int = 5) -> list[dict]:
    """Rows as the recipe writes them: train rows every `log_every` steps (a refused step logs NaN),
    validation every 100 steps, a small benchmark at 100 and 200, the final benchmark and baselines."""
    rng = random.Random(0)
    rows = []
    for step in range(log_every, steps + 1, log_every):
        text = 6.0 * math.exp(-step / 80) + 1.2 + rng.gauss(0, 0.15)
        image = 4.0 * math.exp(-step / 120) + 2.0 + rng.gauss(0, 0.2) if image_loss else 0.0
        loss = (text + image) / 2 if image_loss else text
        warmup = min(1.0, step / 20)
        lr = 2e-3 * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        row = {"step": step, "time": 1000.0 + step, "train/loss": loss, "train/loss_text": text}
        row |= {"train/loss_image": image, "train/lr": lr, "train/grad_norm": 3.0 / (1 + step / 50)}
        row |= {"train/bad_steps": 0.0, "perf/tokens_per_s": 900 + rng.gauss(0, 40), "perf/step_time": 0.2}
        row |= {"perf/mfu": 0.0, "data/epoch": 0.0}
        if step == 150:  # a refused step: non-finite loss, not applied
            row |= {"train/loss": math.nan, "train/loss_text": math.nan, "train/grad_norm": math.nan}
        rows.append(row)
        if step % 100 == 0:
            eval_text = 6.0 * math.exp(-step / 80) + 1.4
            eval_image = 2.5 if image_loss else 0.0
            eval_loss = (eval_text + eval_image) / 2 if image_loss else eval_text
            rows.append(
                {
                    "step": step,
                    "time": 1000.0 + step,
                    "eval/loss": eval_loss,
                    "eval/loss_text": eval_text,
                    "eval/loss_image": eval_image,
                }
            )
        if step in (100, 200):
            rows.append(
                {
                    "step": step,
                    "time": 1000.0 + step,
                    "benchmark/synthetic_vqa/accuracy": step / 5,
                    "benchmark/synthetic_caption/CIDEr": step / 200,
                }
            )
    rows.append(
        {
            "step": steps,
            "time": 2000.0,
            "benchmark/synthetic_vqa/accuracy": 55.3,
            "benchmark/synthetic_caption/CIDEr": 1.733,
            "baseline/synthetic_vqa/accuracy": 9.7,
            "baseline/synthetic_caption/CIDEr": 0.472,
        }
    )
    return rows


def write_metrics(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def described(panels) -> dict[str, list[str]]:
    return {panel.title: [line.label for line in panel.lines] for panel in panels}


def test_a_text_only_stage_draws_each_family_once_and_scores_against_their_baselines(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", recorded_run(image_loss=False))
    panels = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")

    assert described(panels) == {
        # loss == loss_text in a stage without image loss: one curve that says so; the zero image
        # loss is not drawn
        "loss": ["train/loss (= train/loss_text)", "eval/loss (= eval/loss_text)"],
        "learning rate": ["train/lr"],
        "gradient norm (before clipping)": ["train/grad_norm"],
        "throughput (tokens/s)": ["perf/tokens_per_s"],
        "synthetic_caption CIDEr": ["model", "baseline"],
        "synthetic_vqa accuracy": ["model", "baseline"],
    }
    loss = panels[0]
    assert loss.notes == ["train/loss_image: always 0", "eval/loss_image: always 0"]
    train = loss.lines[0]
    assert 150 not in train.steps and len(train.steps) == 59  # the refused step's NaN is left out
    vqa = panels[-1]
    assert vqa.lines[0].steps == [100, 200, 300] and vqa.lines[0].values[-1] == 55.3
    assert vqa.lines[1].dashed and vqa.lines[1].values == [9.7]
    assert (vqa.lines[0].name, vqa.lines[1].name) == (
        "benchmark/synthetic_vqa/accuracy",
        "baseline/synthetic_vqa/accuracy",
    )
    assert [line.smooth for p in panels[1:4] for line in p.lines] == [False, True, True]  # lr: exact

    image = Image.open(tmp_path / "curves.png")
    assert image.size == (1560, 720)  # 6 panels: 3 columns x 2 rows of 5.2 x 3.6 inches at 100 dpi
    # not a blank canvas: the curves put many colours on it
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def test_a_stage_with_image_loss_draws_all_three_losses(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", recorded_run(image_loss=True))
    (loss, *_) = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert [line.label for line in loss.lines] == [
        "train/loss",
        "train/loss_text",
        "train/loss_image",
        "eval/loss",
        "eval/loss_text",
        "eval/loss_image",
    ]
    assert loss.notes == []


def test_a_score_without_baseline_says_so_and_a_zero_score_is_drawn(tmp_path):
    rows = [
        {"step": 1, "train/loss": 3.0, "train/loss_text": 3.0},
        {"step": 2, "benchmark/pope/f1": 0.0},
    ]
    write_metrics(tmp_path / "metrics.jsonl", rows)
    panels = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert described(panels) == {
        "loss": ["train/loss (= train/loss_text)"],
        "pope f1": ["model"],
    }
    assert panels[1].notes == ["no baseline/pope/f1 logged"]
    assert Image.open(tmp_path / "curves.png").size == (1040, 360)


def test_nothing_to_draw_writes_no_file(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "perf/step_time": 0.1, "train/loss_image": 0.0}])
    assert plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png") == []
    assert not (tmp_path / "curves.png").exists()
    assert plot_curves(tmp_path / "missing.jsonl", tmp_path / "curves.png") == []


def test_ema_is_debiased_and_leaves_short_series_alone():
    assert ema([5.0, 4.0, 3.0] * 6) == [5.0, 4.0, 3.0] * 6
    flat = ema([2.0] * 40)
    assert all(math.isclose(v, 2.0) for v in flat)  # no pull towards 0 at the start
    noisy = [1.0 if i % 2 else 3.0 for i in range(100)]
    smoothed = ema(noisy)
    assert max(smoothed[50:]) - min(smoothed[50:]) < 0.3 * (max(noisy) - min(noisy))
