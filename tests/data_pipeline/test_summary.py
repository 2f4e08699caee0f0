"""Dataset summary: counts, length histogram and a picture grid written to disk."""

from __future__ import annotations

import json

from PIL import Image

from libra.data.skips import Skipped
from libra.data.summary import summarize
from libra.data.synthetic_readers import synthetic_laion, synthetic_vqa


def test_summary_of_synthetic_readers(tmp_path):
    generator = dict(train_images=12, val_images=1, test_images=4)
    laion = synthetic_laion(tmp_path / "cache", "train", generator=generator, shuffle=False)
    summary = summarize(list(laion) + [Skipped("corrupt_image", "x")], tmp_path / "laion", "laion_train")
    assert summary["samples"] == {"CaptionSample": 12} and summary["skipped"] == {"corrupt_image": 1}
    histogram = summary["response_words"]["histogram"]
    assert sum(histogram.values()) == 12 and summary["response_words"]["min"] >= 4
    assert json.loads((tmp_path / "laion" / "summary.json").read_text()) == summary
    grid = Image.open(tmp_path / "laion" / "samples.png")
    assert grid.size == (1200, 1020)  # 12 images: 3 rows of 4
    assert Image.open(tmp_path / "laion" / "lengths.png").size == (600, 350)

    vqa = summarize(synthetic_vqa(tmp_path / "cache", "test", generator=generator), tmp_path / "vqa", "vqa")
    assert vqa["samples"] == {"VQASample": 12} and vqa["response_words"]["histogram"] == {"1": 12}
