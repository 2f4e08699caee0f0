"""COCO captions in the Karpathy-split json layout of BLIP/LAVIS (docs/design.md §6.2), and the
COCO-format ground truth that caption metrics score against.

Entries are ``{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": str | [str, ...]}``:
train files hold one caption per entry, val/test files a list of references (docs/design.md B21:
the reference caption processor fails on those; here each reference is cleaned on its own).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from libra.tokenizer.captions import CaptionCleaner
from libra.tokenizer.samples import CaptionSample

from .images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_ERRORS, image_fault, open_image_file, preprocess
from .json_records import PackedRecords, read_annotation_json
from .skips import Skipped, skip

_TRAILING_NUMBER = re.compile(r"(\d+)\.\w+$")


def image_id_of(entry: dict, index: int) -> int:
    """The COCO image id of an entry: an integer ``image_id`` field, else the number ending the file
    name (``COCO_val2014_000000391895.jpg`` -> 391895, as LAVIS derives it for scoring), else the
    entry's position. (LAVIS train files carry string ids like ``coco_391895``; those are ignored.)"""
    if isinstance(entry.get("image_id"), int):
        return entry["image_id"]
    match = _TRAILING_NUMBER.search(str(entry.get("image", "")))
    return int(match.group(1)) if match else index


def references_of(entry: dict) -> list[str]:
    """The raw caption(s) of an entry as a list; raises ValueError when there are none."""
    caption = entry.get("caption")
    captions = [caption] if isinstance(caption, str) else caption
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"caption must be a string or a non-empty list of strings, got {caption!r}")
    return captions


def image_path_of(entry: dict) -> str:
    """The entry's image path (relative to the image root); raises ValueError when it has none."""
    image = entry.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"image must be a path relative to the image root, got {image!r}")
    return image


def karpathy_to_coco_ground_truth(annotation_file: str | Path) -> dict:
    """COCO caption ground truth (``images`` + ``annotations``) built from a Karpathy json, with the
    image ids ``KarpathyCaptions`` puts in its sample keys. References are kept raw: the metric
    code does its own (PTB) tokenisation."""
    entries = read_annotation_json(annotation_file, "Karpathy caption")
    images, annotations = [], []
    for index, entry in enumerate(entries):
        try:
            captions = references_of(entry)
            file_name = Path(image_path_of(entry)).name  # COCO: a bare file name
        except (ValueError, AttributeError) as error:
            skip("malformed_entry", f"karpathy entry {index} of {annotation_file}", str(error))
            continue
        image_id = image_id_of(entry, index)
        images.append({"id": image_id, "file_name": file_name})
        for caption in captions:
            annotations.append({"image_id": image_id, "caption": caption, "id": len(annotations) + 1})
    return {
        "info": {"description": f"ground truth of {Path(annotation_file).name}"},
        "licenses": [],
        "type": "captions",
        "images": images,
        "annotations": annotations,
    }


class KarpathyCaptions(Dataset):
    """COCO caption pairs; one sample per reference (``one_per_reference=True``, more training pairs)
    or one per image with its first reference (evaluation: the ground truth holds all of them).

    A sample's ``key`` is its COCO image id as a string, the id results must carry for scoring.
    """

    def __init__(
        self,
        annotation_file: str,
        image_root: str,
        image_transform: Callable[[Image.Image], Any] | None = None,
        one_per_reference: bool = True,
        sample_n: int | None = None,  # reference validation config: the first 5000 entries
        max_words: int = 64,
        lowercase: bool = True,
        strip_html: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,  # larger images are skipped, counted
    ):
        entries = read_annotation_json(annotation_file, "Karpathy caption")
        if not isinstance(entries, list):
            raise ValueError(f"Karpathy caption file {annotation_file} must hold a json list of entries")
        entries = entries[:sample_n] if sample_n is not None else entries
        self.annotation_file, self.image_root = annotation_file, Path(image_root)
        if not self.image_root.is_dir():
            # a mistyped root would turn every entry into a missing_image skip, not an error
            raise FileNotFoundError(
                f"Karpathy caption image root {image_root} is not a folder; check data.root in the config"
            )
        self.image_transform, self.max_image_pixels = image_transform, max_image_pixels
        self.clean_caption = CaptionCleaner(max_words, lowercase, strip_html)
        # (entry position, reference position): the reference list is only read when indexed
        pairs = []
        for position, entry in enumerate(entries):
            caption = entry.get("caption") if isinstance(entry, dict) else None
            count = len(caption) if one_per_reference and isinstance(caption, list) else 1
            pairs.extend((position, reference) for reference in range(max(count, 1)))
        self._entries = PackedRecords(entries)
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> CaptionSample | Skipped:
        position, reference = self._pairs[index]
        entry = self._entries[position]
        where = f"karpathy entry {position} of {self.annotation_file}"
        try:
            caption = references_of(entry)[reference]
            relative = image_path_of(entry)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return skip("malformed_entry", where, str(error))
        caption = self.clean_caption(caption)
        if not caption:
            return skip("empty_caption", where)
        try:
            image = open_image_file(self.image_root / relative, max_pixels=self.max_image_pixels)
        except FileNotFoundError:
            return skip("missing_image", where, str(self.image_root / relative))
        except IMAGE_ERRORS as error:
            return skip(image_fault(error), where, str(error))
        pixels = preprocess(self.image_transform, image, where)
        if isinstance(pixels, Skipped):
            return pixels
        return CaptionSample(pixels, caption, key=str(image_id_of(entry, position)))
