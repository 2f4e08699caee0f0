"""LLaVA instruction data (the ``llava_v1_5_mix665k.json`` layout, docs/design.md §6.3) as
``ConversationSample``.

Entries are ``{"id", optional "image": relative path (or a list of them), "conversations":
[{"from": "human" | "gpt", "value": str}, ...]}``. Lazy: the json is parsed once, each entry is
validated and its images opened only when indexed. Images are looked up under each of
``image_roots`` in order (the mix keeps COCO, GQA, OCR-VQA, TextVQA and VG images under different
folders); the reference's retry with ``-`` replaced by ``_`` in the file name is kept as an option.
Text-only entries yield a conversation without images (their ``<image>`` tags removed, as in the
reference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from libra.tokenizer.samples import ConversationSample, Turn

from .images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_ERRORS, image_fault, open_image_file, preprocess
from .json_records import PackedRecords, read_annotation_json
from .skips import Skipped, skip

IMAGE_TAG = "<image>"
ROLES = {"human": "user", "gpt": "assistant"}


def parse_turns(conversations: Any) -> list[Turn]:
    """Validate a ``conversations`` list and map it to turns; ValueError says what is wrong."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("conversations must be a non-empty list")
    turns = []
    for position, message in enumerate(conversations):
        if not isinstance(message, dict) or message.get("from") not in ROLES:
            raise ValueError(f"message {position} has no 'from' in {sorted(ROLES)}")
        if not isinstance(message.get("value"), str):
            raise ValueError(f"message {position} has no string 'value'")
        expected = "user" if position % 2 == 0 else "assistant"
        if ROLES[message["from"]] != expected:
            raise ValueError(f"message {position} should come from the {expected}: turns must alternate")
        turns.append(Turn(expected, message["value"]))
    return turns


class LlavaInstructions(Dataset):
    """Instruction conversations with their images; bad entries come out as ``Skipped`` markers."""

    def __init__(
        self,
        annotation_file: str,
        image_roots: str | Sequence[str],
        image_transform: Callable[[Image.Image], Any] | None = None,
        dash_underscore_fallback: bool = True,
        image_token_count: int = 578,  # tokens one image takes in the sequence, for ``lengths``
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,  # larger images are skipped, counted
    ):
        entries = read_annotation_json(annotation_file, "LLaVA instruction")
        if not isinstance(entries, list):
            raise ValueError(f"LLaVA instruction file {annotation_file} must hold a json list of entries")
        self.annotation_file = annotation_file
        self.image_roots = (
            [Path(image_roots)] if isinstance(image_roots, str) else [Path(r) for r in image_roots]
        )
        absent = [str(root) for root in self.image_roots if not root.is_dir()]
        if absent:
            # a mistyped root would turn every image entry into a missing_image skip, not an error
            raise FileNotFoundError(
                f"LLaVA image root(s) {absent} are not folders; check data.image_roots in the data config"
            )
        self.image_transform = image_transform
        self.dash_underscore_fallback = dash_underscore_fallback
        self.image_token_count = image_token_count
        self.max_image_pixels = max_image_pixels
        self._entries = PackedRecords(entries)
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def lengths(self) -> list[int]:
        """Rough sequence length per entry (words + image tokens) for length-grouped batching;
        computed on first use from the text alone, no images opened."""
        if self._lengths is None:
            self._lengths = [self._rough_length(self._entries[i]) for i in range(len(self))]
        return self._lengths

    def _rough_length(self, entry: Any) -> int:
        if not isinstance(entry, dict):
            return 0
        words = sum(
            len(str(message.get("value", "")).split())
            for message in entry.get("conversations") or []
            if isinstance(message, dict)
        )
        try:
            images = len(_image_paths(entry))
        except ValueError:  # malformed: skipped when indexed, its length hardly matters
            images = 0
        return words + images * self.image_token_count

    def __getitem__(self, index: int) -> ConversationSample | Skipped:
        entry = self._entries[index]
        where = f"llava entry {index} of {self.annotation_file}"
        try:
            where += f" (id {entry.get('id')})"
            turns = parse_turns(entry.get("conversations"))
            paths = _image_paths(entry)
        except (ValueError, AttributeError, TypeError) as error:
            return skip("malformed_entry", where, str(error))
        if not paths:
            # text-only: the reference deletes stray image tags rather than failing
            turns = [Turn(t.role, t.text.replace(IMAGE_TAG, "").strip()) for t in turns]
            return ConversationSample(turns, [], key=str(entry.get("id", index)))
        tags = sum(turn.text.count(IMAGE_TAG) for turn in turns if turn.role == "user")
        tags_elsewhere = sum(turn.text.count(IMAGE_TAG) for turn in turns if turn.role == "assistant")
        if tags != len(paths) or tags_elsewhere:
            detail = f"{len(paths)} image(s) but {tags} {IMAGE_TAG} tag(s) in user turns"
            return skip("image_tag_mismatch", where, detail + f", {tags_elsewhere} in assistant turns")
        images = []
        for relative in paths:
            try:
                image = open_image_file(self._find_image(relative), max_pixels=self.max_image_pixels)
            except FileNotFoundError:
                return skip("missing_image", where, f"{relative} under {[str(r) for r in self.image_roots]}")
            except IMAGE_ERRORS as error:
                return skip(image_fault(error), where, f"{relative}: {error}")
            pixels = preprocess(self.image_transform, image, f"{where} image {relative}")
            if isinstance(pixels, Skipped):
                return pixels
            images.append(pixels)
        return ConversationSample(turns, images, key=str(entry.get("id", index)))

    def _find_image(self, relative: str) -> Path:
        """First root holding the file; then the ``-``→``_`` file-name variant (OCR-VQA names)."""
        names = [relative]
        if self.dash_underscore_fallback:
            parent, _, name = relative.rpartition("/")
            names.append(f"{parent}/{name.replace('-', '_')}" if parent else name.replace("-", "_"))
        for name in names:
            for root in self.image_roots:
                if (root / name).is_file():
                    return root / name
        raise FileNotFoundError(relative)


def _image_paths(entry: dict) -> list[str]:
    image = entry.get("image")
    if image is None:
        return []
    paths = [image] if isinstance(image, str) else image
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ValueError(f"'image' must be a path or a list of paths, got {image!r}")
    return paths
