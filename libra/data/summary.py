"""A readable summary of a dataset, to look at before training: counts per sample kind and skip
reason, text-length statistics, a histogram of caption (or answer) lengths and a grid of sample
images with their text, written as ``summary.json``, ``lengths.png`` and ``samples.png``.

    python -m libra.data.summary CACHE_DIR OUT_DIR      # the synthetic dataset, every reader
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from libra.tokenizer.samples import CaptionSample, ConversationSample, VQASample  # noqa: E402

from .laion import StreamItem  # noqa: E402
from .skips import Skipped  # noqa: E402


def describe(sample: Any) -> tuple[Any, str]:
    """(first image or None, the text a person would read) of one sample."""
    if isinstance(sample, CaptionSample):
        return sample.image, sample.caption
    if isinstance(sample, VQASample):
        answer = Counter(sample.answers).most_common(1)[0][0] if sample.answers else "?"
        return sample.image, f"Q: {sample.question}\nA: {answer}"
    if isinstance(sample, ConversationSample):
        first = sample.turns[0].text.replace("<image>", "").strip()
        reply = sample.turns[1].text if len(sample.turns) > 1 else ""
        return (sample.images[0] if sample.images else None), f"U: {first}\nA: {reply}"
    raise TypeError(f"cannot summarise a {type(sample).__name__}")


def response_length(sample: Any) -> int:
    """Words the model is trained to produce: caption, most common answer, or assistant turns."""
    if isinstance(sample, CaptionSample):
        return len(sample.caption.split())
    if isinstance(sample, VQASample):
        return len(Counter(sample.answers).most_common(1)[0][0].split()) if sample.answers else 0
    return sum(len(t.text.split()) for t in sample.turns if t.role == "assistant")


def summarize(
    items: Iterable[Any], out_dir: str | Path, name: str, max_samples: int = 5000, grid: int = 16
) -> dict:
    """Read up to ``max_samples`` items (samples, skip markers or stream items) and write the summary.

    Map-style datasets can be passed directly (iteration stops at their end); returns the json dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds, skipped, lengths, shown = Counter(), Counter(), [], []
    for read, item in enumerate(_iterate(items)):
        if read >= max_samples:
            break
        if isinstance(item, StreamItem):
            item = item.item
        if isinstance(item, Skipped):
            skipped[item.reason] += 1
            continue
        kinds[type(item).__name__] += 1
        lengths.append(response_length(item))
        image, text = describe(item)
        if len(shown) < grid and image is not None:
            shown.append((image, text))
    words = np.asarray(lengths or [0])
    summary = {
        "name": name,
        "samples": dict(kinds),
        "skipped": dict(skipped),
        "response_words": {
            "mean": round(float(words.mean()), 3),
            "min": int(words.min()),
            "max": int(words.max()),
            "histogram": {str(k): v for k, v in sorted(Counter(lengths).items())},
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot_lengths(lengths, out_dir / "lengths.png", name)
    _plot_grid(shown, out_dir / "samples.png", name)
    return summary


def _iterate(items: Iterable[Any]):
    """Map-style datasets have no ``__iter__`` that stops cleanly: index them up to ``len``."""
    if hasattr(items, "__getitem__") and hasattr(items, "__len__"):
        return (items[i] for i in range(len(items)))
    return iter(items)


def _plot_lengths(lengths: list[int], path: Path, name: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(lengths, bins=range(0, max(lengths or [0]) + 2), color="#4472c4", edgecolor="white")
    axis.set(
        xlabel="words in the response (caption / answer / assistant turns)", ylabel="samples", title=name
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_grid(shown: list[tuple[Any, str]], path: Path, name: str) -> None:
    columns = 4
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 3, rows * 3.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, text) in zip(axes.flat, shown):
        axis.imshow(_displayable(image))
        axis.set_title("\n".join(textwrap.wrap(text, 32)[:4]), fontsize=7)
    figure.suptitle(name)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _displayable(image: Any) -> np.ndarray:
    """A PIL image as is; preprocessed (3, H, W) pixels rescaled to [0, 1] for display."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    pixels = np.asarray(image, dtype=np.float32).transpose(1, 2, 0)
    low, high = pixels.min(), pixels.max()
    return (pixels - low) / max(high - low, 1e-6)


def summarize_data_cli(argv: list[str]) -> None:
    """Summarise every reader of the synthetic dataset in ``CACHE_DIR`` into ``OUT_DIR/<reader>``."""
    from .synthetic_readers import synthetic_captions, synthetic_instructions, synthetic_laion, synthetic_vqa

    if len(argv) != 2:
        raise SystemExit("usage: python -m libra.data.summary CACHE_DIR OUT_DIR")
    cache_dir, out_dir = argv
    readers = {
        "laion_train": synthetic_laion(cache_dir, "train", shuffle=False),
        "captions_test": synthetic_captions(cache_dir, "test", one_per_reference=False),
        "vqa_test": synthetic_vqa(cache_dir, "test"),
        "instructions_train": synthetic_instructions(cache_dir, "train"),
    }
    for name, reader in readers.items():
        print(json.dumps(summarize(reader, Path(out_dir) / name, name)))


if __name__ == "__main__":
    summarize_data_cli(sys.argv[1:])
