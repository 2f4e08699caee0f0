"""The image-code ↔ model-id mapping (docs/design.md §1.3): one small class so no one recomputes offsets.

Text ids are [0, V); code c of any codebook is V + c; boi = V + codebook_size; eoi = boi + 1. An image
is ``tokens_per_image = g*g + 2`` positions [boi, patches in raster order, eoi] with vision indices
0..g*g+1; text and padding positions get vision index ``g*g + 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageVocab:
    text_vocab_size: int  # V: the base text vocabulary, without <img_ph>/<img_gen>
    codebook_size: int
    num_codebook: int
    grid: int  # g: patches per side

    @property
    def boi_id(self) -> int:
        return self.text_vocab_size + self.codebook_size

    @property
    def eoi_id(self) -> int:
        return self.boi_id + 1

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def tokens_per_image(self) -> int:
        """Also the vision index of text/padding positions (``max_vision_token_length``)."""
        return self.num_patches + 2

    @property
    def text_vision_index(self) -> int:
        return self.tokens_per_image

    def indices_to_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """(n, g*g, K) LFQ indices → framed model ids (K, n, g*g + 2)."""
        n = indices.shape[0]
        codes = indices.permute(2, 0, 1) + self.text_vocab_size  # (K, n, g*g)
        boi = codes.new_full((self.num_codebook, n, 1), self.boi_id)
        eoi = codes.new_full((self.num_codebook, n, 1), self.eoi_id)
        return torch.cat([boi, codes, eoi], dim=-1)

    def ids_to_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """Framed ids (K, n, g*g + 2) or bare code ids (K, n, g*g) → LFQ indices (n, g*g, K)."""
        if ids.shape[-1] == self.tokens_per_image:
            ids = ids[..., 1:-1]
        indices = ids - self.text_vocab_size
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"image span holds ids outside the code range [{self.text_vocab_size}, {self.boi_id})"
            )
        return indices.permute(1, 2, 0)
