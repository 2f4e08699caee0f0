"""What a dataset reader yields and the processor consumes: one example before tokenisation.

Images are either decoded PIL images or already preprocessed pixel tensors (3, H, W) — workers
preprocess, so the processor accepts both. ``key`` identifies the example in error messages and
skip counters ("shard 00012.tar key 000123456", "llava entry 4711").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from PIL import Image

ImageLike = Union[Image.Image, "torch.Tensor"]  # noqa: F821 - torch only at runtime


@dataclass
class CaptionSample:
    """Image-to-text pair (LAION / COCO captions). With ``task="t2i"`` the caption is the prompt and
    the image is the target (docs/design.md §6.4); a t2i generation prompt has ``image=None``."""

    image: ImageLike | None
    caption: str
    key: str = ""
    task: Literal["i2t", "t2i"] = "i2t"
    # The official contiguous_ignore_sign: hide the image's CLIP features from the model (zeroed
    # signal). The LAION reader sets it on a t2i sample with probability t2i_hide_features_prob
    # (0.9, the reference's 1 - continuous_prob_t2i), seeded per example; i2t keeps it False.
    hide_image_features: bool = False
    # Optional instruction between image and caption ("Describe the image."): not a target.
    instruction: str = ""


@dataclass
class Turn:
    role: Literal["user", "assistant"]
    text: str


@dataclass
class ConversationSample:
    """LLaVA-style multi-turn conversation. ``<image>`` tags in user turns mark where the images go,
    in order; an entry without images is a text-only conversation."""

    turns: list[Turn]
    images: list[ImageLike] = field(default_factory=list)
    key: str = ""


@dataclass
class TextSample:
    """Plain text (language-model data): every token after BOS is a target."""

    text: str
    key: str = ""


@dataclass
class PromptSample:
    """A generation prompt already laid out by the conversation template (what
    ``LibraProcessor.apply_chat_template`` returns), with one ``<image>`` tag where each image goes,
    in order: the form of ``processor(text=..., images=...)``."""

    text: str
    images: list[ImageLike] = field(default_factory=list)
    key: str = ""


@dataclass
class VQASample:
    """One visual question; ``answers`` are the human answers (10 for VQAv2), empty at test time."""

    image: ImageLike
    question: str
    question_id: int | str
    answers: list[str] = field(default_factory=list)
    key: str = ""
