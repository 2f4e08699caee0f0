"""Caption cleaning of the pretraining data (official ``libra_caption`` processor, docs/design.md §6.4)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPACES = re.compile(r"\s{2,}")
_TAG_END = re.compile(r"[>\n]")


def remove_tags(text: str) -> str:
    """``re.sub(r"<.*?>", "", text)`` (the official cleaning: ``<`` up to the first ``>`` on its line),
    in one pass. The regex retries from every ``<``: a caption of 40,000 ``<`` and no ``>`` took
    seconds, long enough to stall a loader worker."""
    out, i = [], 0
    while (start := text.find("<", i)) >= 0:
        end = _TAG_END.search(text, start + 1)
        if end is None:  # no > and no newline after it: no later < closes either
            break
        if end.group() == "\n":  # no tag opens on this line from here on
            out.append(text[i : end.start()])
            i = end.start()
            continue
        out.append(text[i:start])
        i = end.end()
    out.append(text[i:])
    return "".join(out)


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
            caption = remove_tags(caption)
        for char in "*#~":
            caption = caption.replace(char, " ")
        caption = _SPACES.sub(" ", caption).strip()
        if self.lowercase:
            caption = caption.lower()
        words = caption.split(" ")
        if len(words) > self.max_words:
            caption = " ".join(words[: self.max_words])
        return self.prompt + caption
