"""Caption cleaning of the pretraining data (official ``libra_caption`` processor, docs/design.md §6.4)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HTML = re.compile(r"<.*?>")
_SPACES = re.compile(r"\s{2,}")


@dataclass(frozen=True)
class CaptionCleaner:
    """``*``, ``#``, ``~`` → space; runs of whitespace → one space; strip; lowercase; first words.

    Defaults are the official pretraining config (``max_words`` 64, lowercase on, HTML kept).
    """

    max_words: int = 64
    lowercase: bool = True
    remove_html: bool = False
    prompt: str = ""

    def __call__(self, caption: str) -> str:
        if not isinstance(caption, str):
            # COCO Karpathy files store a list of references (docs/design.md B21): pick one before calling.
            raise TypeError(f"caption must be a str, got {type(caption).__name__}; pick one reference first")
        if self.remove_html:
            caption = _HTML.sub("", caption)
        for char in "*#~":
            caption = caption.replace(char, " ")
        caption = _SPACES.sub(" ", caption).strip()
        if self.lowercase:
            caption = caption.lower()
        words = caption.split(" ")
        if len(words) > self.max_words:
            caption = " ".join(words[: self.max_words])
        return self.prompt + caption
