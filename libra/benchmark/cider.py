"""CIDEr-D as pycocoevalcap's ``Cider`` computes it (what COCO reports as "CIDEr").

Document frequencies come from the references of the *scored* images only, so a subset gets
different scores; weights are raw term counts × (log N − log max(1, df)); per n the similarity
clips the candidate weight by the reference weight in the numerator, divides by both norms and
multiplies by a Gaussian length penalty (σ = 6) on the difference in *bigram* counts; averaged
over n = 1..4 and over references, ×10. Pure Python + numpy.
"""

from __future__ import annotations

import numpy as np

from libra.benchmark.bleu import lookup
from libra.benchmark.ngram_table import CaptionBatch, sorted_by_key

SIGMA = 6.0


def cider_d(batch: CaptionBatch) -> np.ndarray:
    """Per-image CIDEr-D; the corpus score is their mean."""
    t, n = batch.table, batch.table.n
    is_cand, key = batch.row_is_candidate, batch.keys

    # df: number of images whose reference set holds the n-gram.
    ref_pairs = batch.reference_maxima[0]
    df = np.bincount(ref_pairs // batch.num_images, minlength=t.num_grams)
    idf = np.log(float(batch.num_images)) - np.log(np.maximum(1.0, df))
    weight = t.count * idf[t.gram]

    slot = t.sentence * n + t.order
    norm = np.sqrt(np.bincount(slot, weights=weight * weight, minlength=len(t.lengths) * n)).reshape(-1, n)

    # Numerator per (reference, n): sum over shared n-grams of min(w_cand, w_ref) * w_ref.
    cand_key, cand_weight = sorted_by_key(key[is_cand], weight[is_cand])  # unique: one candidate per image
    w_cand = lookup(key[~is_cand], cand_key, cand_weight, 0.0)
    w_ref = weight[~is_cand]
    contrib = np.minimum(w_cand, w_ref) * w_ref
    numerator = np.bincount(slot[~is_cand], weights=contrib, minlength=len(t.lengths) * n).reshape(-1, n)

    refs = ~batch.is_candidate
    ref_image = batch.image[refs]
    norm_cand = norm[batch.is_candidate][ref_image]
    norm_ref = norm[refs]
    numerator = numerator[refs]
    both = (norm_cand != 0) & (norm_ref != 0)
    sim = np.where(both, numerator / np.where(both, norm_cand * norm_ref, 1.0), numerator)
    bigrams = np.maximum(t.lengths - 1, 0)  # the reference's "length" counts bigrams
    delta = (bigrams[batch.is_candidate][ref_image] - bigrams[refs]).astype(np.float64)
    sim = sim * np.exp(-(delta**2) / (2 * SIGMA**2))[:, None]

    per_image = np.add.reduceat(sim, batch.ref_starts, axis=0)  # (images, n), summed over refs
    return per_image.mean(axis=1) / batch.ref_counts * 10.0
