"""BLEU-1..4 as pycocoevalcap's ``Bleu(4)`` computes it (option ``'closest'``).

Per image: candidate n-gram counts clipped by the largest count of that n-gram in any single
reference; effective reference length = the reference length closest to the candidate's (ties go
to the shorter). Corpus BLEU comes from the summed counts, not from the per-image scores. Both
carry the reference's 1e-15 / 1e-9 smoothing and its brevity penalty written as
``exp(1 - 1/ratio)`` with ``ratio = (c + 1e-15) / (r + 1e-9)``. Pure Python + numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from libra.benchmark.ngram_table import CaptionBatch

TINY = 1e-15
SMALL = 1e-9


@dataclass
class BleuStats:
    """Corpus sufficient statistics: candidate length, effective reference length, and per
    order the number of candidate n-grams (guess) and of clipped matches (correct)."""

    testlen: int
    reflen: int
    guess: list[int]
    correct: list[int]

    def scores(self) -> list[float]:
        """BLEU-1..n (cumulative geometric means) from these statistics."""
        out, product = [], 1.0
        for k in range(len(self.guess)):
            product *= (self.correct[k] + TINY) / (self.guess[k] + SMALL)
            out.append(product ** (1.0 / (k + 1)))
        ratio = (self.testlen + TINY) / (self.reflen + SMALL)
        if ratio < 1:
            out = [s * math.exp(1 - 1 / ratio) for s in out]
        return out


def lookup(keys: np.ndarray, table_keys: np.ndarray, table_values: np.ndarray, default) -> np.ndarray:
    """``table_values`` at the positions of ``keys`` in the sorted ``table_keys``, else ``default``."""
    pos = np.searchsorted(table_keys, keys)
    pos_clipped = np.minimum(pos, max(len(table_keys) - 1, 0))
    found = (pos < len(table_keys)) & (table_keys[pos_clipped] == keys) if len(table_keys) else pos < 0
    return np.where(found, table_values[pos_clipped] if len(table_keys) else default, default)


def bleu(batch: CaptionBatch) -> tuple[BleuStats, np.ndarray]:
    """Corpus statistics and per-image BLEU-1..n, shape (images, n)."""
    t, n, num_images = batch.table, batch.table.n, batch.num_images
    is_cand = batch.row_is_candidate
    max_key, max_count = batch.reference_maxima
    clipped = np.minimum(t.count[is_cand], lookup(batch.keys[is_cand], max_key, max_count, 0))
    slot = batch.image[t.sentence[is_cand]] * n + t.order[is_cand]
    correct = np.bincount(slot, weights=clipped, minlength=num_images * n).reshape(num_images, n)
    correct = np.rint(correct).astype(np.int64)

    cand_len = t.lengths[batch.is_candidate]  # candidates come in image order
    guess = np.maximum(0, cand_len[:, None] - np.arange(n)[None, :])
    ref_len = t.lengths[~batch.is_candidate]
    # closest reference length, ties to the shorter: min over (|l - c|, l)
    closeness = (
        np.abs(ref_len - np.repeat(cand_len, batch.ref_counts)) * (ref_len.max(initial=0) + 1) + ref_len
    )
    reflen = np.minimum.reduceat(closeness, batch.ref_starts) % (ref_len.max(initial=0) + 1)

    per_image = np.empty((num_images, n))
    product = np.ones(num_images)
    for k in range(n):
        product = product * ((correct[:, k] + TINY) / (guess[:, k] + SMALL))
        per_image[:, k] = product ** (1.0 / (k + 1))
    ratio = (cand_len + TINY) / (reflen + SMALL)
    short = ratio < 1
    per_image[short] *= np.exp(1 - 1 / ratio[short])[:, None]

    stats = BleuStats(
        int(cand_len.sum()),
        int(reflen.sum()),
        [int(x) for x in guess.sum(0)],
        [int(x) for x in correct.sum(0)],
    )
    return stats, per_image
