"""Lookup-free quantiser (LFQ) of Libra's vision tokenizer, eval path (docs/design.md §5.3, §5.4).

Each patch feature is projected to ``num_codebook * bits`` values; the sign of each value is one bit
(exactly 0 → bit 0), and each group of ``bits`` values is read as a binary number, first value = most
significant bit. There is no codebook table: code ``i`` of a codebook *is* the ±1 vector of i's bits.
Parameter names follow the official checkpoint (``quantize.project_in`` / ``project_out`` / ``mask``).
"""

from __future__ import annotations

import torch
from torch import nn


class LookupFreeQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, num_codebook: int) -> None:
        super().__init__()
        bits = codebook_size.bit_length() - 1
        if 2**bits != codebook_size:
            raise ValueError(f"codebook_size={codebook_size} must be a power of two for LFQ")
        self.bits = bits
        self.codebook_size = codebook_size
        self.num_codebook = num_codebook
        self.project_in = nn.Linear(dim, num_codebook * bits)
        self.project_out = nn.Linear(num_codebook * bits, dim)
        # Bit weights MSB first, [2^(bits-1), ..., 1]; persistent: the official checkpoint stores it.
        self.register_buffer("mask", 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(n, T, dim) features → (n, T, num_codebook, bits) pre-sign values."""
        return self.project_in(z).unflatten(-1, (self.num_codebook, self.bits))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """(n, T, dim) features → (n, T, num_codebook) int64 indices in [0, codebook_size)."""
        bits = (self.project(z) > 0).long()
        return (bits * self.mask).sum(-1)

    def indices_to_bits(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., num_codebook) indices → (..., num_codebook * bits) ±1 codes, codebook-major."""
        if indices.min() < 0 or indices.max() >= self.codebook_size:
            raise ValueError(
                f"LFQ indices must lie in [0, {self.codebook_size}); got [{indices.min()}, {indices.max()}]"
            )
        on = (indices.unsqueeze(-1) & self.mask) != 0  # (..., K, bits)
        return (on.to(self.project_out.weight.dtype) * 2 - 1).flatten(-2)

    def bits_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`indices_to_bits`: (..., num_codebook * bits) ±1 → (..., num_codebook)."""
        bits = (codes.unflatten(-1, (self.num_codebook, self.bits)) > 0).long()
        return (bits * self.mask).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., num_codebook) indices → (..., dim) code vectors (the ±1 bits through ``project_out``)."""
        return self.project_out(self.indices_to_bits(indices))
