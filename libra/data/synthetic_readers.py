"""The readers over the synthetic shapes dataset, for configs: each call generates the dataset
into ``cache_dir`` if needed (``synthetic.synthetic_dataset``) and opens one split with the real
reader. ``generator`` holds ``SyntheticShapesConfig`` fields; other keywords go to the reader.

    data:
      train: {_target_: libra.data.synthetic_readers.synthetic_laion, cache_dir: ..., samples_per_epoch: 3000}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .coco_karpathy import KarpathyCaptions
from .laion import LaionShards
from .llava_instruct import LlavaInstructions
from .synthetic import SyntheticLayout, synthetic_dataset
from .vqa import VQAv2Questions


def _layout(cache_dir: str | Path, generator: Mapping[str, Any] | None) -> SyntheticLayout:
    return synthetic_dataset(cache_dir, **dict(generator or {}))


def synthetic_laion(
    cache_dir: str, split: str = "train", generator: Mapping[str, Any] | None = None, **reader: Any
) -> LaionShards:
    """The split's webdataset shards through ``LaionShards`` (keywords: its constructor's)."""
    return LaionShards(_layout(cache_dir, generator).laion_urls(split), **reader)


def synthetic_captions(
    cache_dir: str, split: str = "val", generator: Mapping[str, Any] | None = None, **reader: Any
) -> KarpathyCaptions:
    """The split's Karpathy json through ``KarpathyCaptions``; ``ground_truth_file`` is beside it."""
    layout = _layout(cache_dir, generator)
    return KarpathyCaptions(str(layout.karpathy_file(split)), str(layout.image_root), **reader)


def synthetic_vqa(
    cache_dir: str, split: str = "test", generator: Mapping[str, Any] | None = None, **reader: Any
) -> VQAv2Questions:
    """The split's VQAv2 question + annotation files through ``VQAv2Questions``."""
    layout = _layout(cache_dir, generator)
    return VQAv2Questions(
        str(layout.vqa_questions_file(split)),
        str(layout.image_root),
        str(layout.vqa_annotations_file(split)),
        image_name=layout.vqa_image_name(split),
        **reader,
    )


def synthetic_instructions(
    cache_dir: str, split: str = "train", generator: Mapping[str, Any] | None = None, **reader: Any
) -> LlavaInstructions:
    """The split's LLaVA json through ``LlavaInstructions``."""
    layout = _layout(cache_dir, generator)
    return LlavaInstructions(str(layout.llava_file(split)), str(layout.image_root), **reader)
