"""All n-gram counts of a batch of tokenised captions as flat numpy arrays, for BLEU and CIDEr-D.

Both pycocoevalcap scorers split on whitespace (``str.split()``) and count 1..4-grams per
sentence. Counting them for every caption at once with integer ids and sorts, instead of one
Python dict per caption, is what makes the caption metrics fast; the counts are the same.

Layout: captions are grouped by image — each image's references in order, then, after all
references, one candidate per image (``CaptionBatch``). Pure Python + numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass
class NGramTable:
    """One row per (sentence, distinct n-gram): ``sentence``, ``order`` (n - 1), ``gram`` (an id,
    unique across orders) and ``count``; plus ``lengths`` (words per sentence) and ``num_grams``."""

    sentence: np.ndarray
    order: np.ndarray
    gram: np.ndarray
    count: np.ndarray
    lengths: np.ndarray
    num_grams: int
    n: int


def count_ngrams(sentences: Sequence[str], n: int = 4) -> NGramTable:
    words = [s.split() for s in sentences]
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    flat = list(itertools.chain.from_iterable(words))
    total = len(flat)
    # A word's id is the position of its first occurrence (a C-level pass, no Python loop).
    first_seen: dict[str, int] = {}
    ids = np.fromiter(map(first_seen.setdefault, flat, range(total)), dtype=np.int64, count=total)
    vocab_size = max(total, 1)
    sentence_of = np.repeat(np.arange(len(words), dtype=np.int64), lengths)
    ends = np.cumsum(lengths)
    words_left = np.repeat(ends, lengths) - np.arange(total, dtype=np.int64)  # from p to its sentence end

    num_sentences = max(len(words), 1)
    if vocab_size**2 * num_sentences >= 2**63:
        raise ValueError(
            f"{len(words)} captions of {total} words are too many for one batch; score fewer at once"
        )
    parts, offset = [], 0
    start = np.arange(total, dtype=np.int64)  # start position of each live n-gram
    codes = rank = ids
    for k in range(n):
        if k:
            # A (k+1)-gram is a k-gram followed by one more word; only k-grams that can grow
            # (enough words left in their sentence) are kept, and ranks keep the codes small.
            grows = words_left[start] > k
            start, codes = start[grows], rank[grows] * vocab_size + ids[start[grows] + k]
        # One sort by (code, sentence) gives both each code's dense rank (for the next order)
        # and the distinct (sentence, n-gram) pairs with their counts.
        key = codes * num_sentences + sentence_of[start]
        order = np.argsort(key)
        key = key[order]
        code_sorted = key // num_sentences
        is_new_code = np.r_[True, code_sorted[1:] != code_sorted[:-1]] if key.size else np.zeros(0, bool)
        rank_sorted = np.cumsum(is_new_code) - 1
        rank = np.empty_like(order)
        rank[order] = rank_sorted
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else key
        counts = np.diff(np.r_[first, key.size])
        parts.append(
            (key[first] % num_sentences, np.full(first.size, k), rank_sorted[first] + offset, counts)
        )
        offset += int(rank_sorted[-1]) + 1 if rank_sorted.size else 0
    sentence, order, gram, count = (
        np.concatenate(x) if parts else np.zeros(0, np.int64) for x in zip(*parts)
    )
    return NGramTable(sentence, order, gram, count, lengths, offset, n)


def sorted_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` and ``values`` in key order (a no-op check when they already are)."""
    if keys.size and np.any(keys[1:] < keys[:-1]):
        order = np.argsort(keys, kind="stable")
        return keys[order], values[order]
    return keys, values


@dataclass
class CaptionBatch:
    """Tokenised captions of many images: ``image`` and ``is_candidate`` per sentence, the
    n-gram table, and ``ref_starts`` / ``ref_counts`` (each image's references are contiguous)."""

    table: NGramTable
    image: np.ndarray
    is_candidate: np.ndarray
    ref_starts: np.ndarray
    ref_counts: np.ndarray
    num_images: int

    @cached_property
    def keys(self) -> np.ndarray:
        """(n-gram, image) key of every table row: ``gram * num_images + image``. The table comes
        sorted by (n-gram, sentence) and each image's references are consecutive sentences, so
        the keys of the reference rows (and of the candidate rows) are already in order."""
        return self.table.gram * self.num_images + self.image[self.table.sentence]

    @cached_property
    def row_is_candidate(self) -> np.ndarray:
        return self.is_candidate[self.table.sentence]

    @cached_property
    def reference_maxima(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct (image, n-gram) keys over the references, and for each the largest
        count of that n-gram in any single reference of the image."""
        refs = ~self.row_is_candidate
        keys, counts = sorted_by_key(self.keys[refs], self.table.count[refs])
        if keys.size == 0:
            return keys, counts
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return keys[first], np.maximum.reduceat(counts, first)


def caption_batch(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> CaptionBatch:
    ref_counts = np.array([len(r) for r in references], dtype=np.int64)
    num_refs = int(ref_counts.sum())
    sentences = [r for refs in references for r in refs] + list(candidates)
    image = np.concatenate([np.repeat(np.arange(len(references)), ref_counts), np.arange(len(candidates))])
    is_candidate = np.arange(len(sentences)) >= num_refs
    ref_starts = np.cumsum(ref_counts) - ref_counts
    return CaptionBatch(
        count_ngrams(sentences, n), image, is_candidate, ref_starts, ref_counts, len(references)
    )
