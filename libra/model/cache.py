"""KV cache of the bridge attention (spec §4.1, fixing P5 and B13).

Per layer it holds the four post-RoPE tensors an attention step needs, each (B, H, T, D): the key and
value sets seen by image queries (K^V, V^V) and by text queries (K^T, V^T). A cached position's modality
never changes, so the bridge terms can be folded in once when the position is written. Storage is
preallocated and grown by doubling, so a decoding step writes in place instead of re-copying the cache.
In '2d' mode it also keeps the final hidden states of every position (the 2d head looks R - 1 slots back).
"""

import torch


class LibraCache:
    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.length = 0  # positions stored and committed (advanced after the last layer of a forward)
        self.store: list[torch.Tensor | None] = [None] * num_layers  # (4, B, H, capacity, D) per layer
        self.final_hidden: torch.Tensor | None = None  # (B, T, C), '2d' mode only
        self.capacity_hint = 0  # total length expected (set by generate), so decoding never reallocates

    def get_seq_length(self) -> int:
        return self.length

    def update(self, layer: int, k_v, k_t, v_v, v_t) -> tuple[torch.Tensor, ...]:
        """Write the new positions of one layer; return the four sets over all positions (B, H, T, D)."""
        new = torch.stack([k_v, k_t, v_v, v_t])  # (4, B, H, N, D)
        end = self.length + new.shape[3]
        buf = self.store[layer]
        if buf is None or buf.shape[3] < end:
            old = buf.shape[3] if buf is not None else 0
            grown = new.new_empty(*new.shape[:3], max(end, 2 * old, self.capacity_hint), new.shape[4])
            if buf is not None:
                grown[:, :, :, : self.length] = buf[:, :, :, : self.length]
            self.store[layer] = buf = grown
        buf[:, :, :, self.length : end] = new
        return tuple(buf[:, :, :, :end].unbind(0))

    def advance(self, n: int) -> None:
        self.length += n

    def append_final_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Append (B, N, C) final hidden states of the new positions; return those of all positions."""
        if self.final_hidden is None:
            self.final_hidden = h
        else:
            self.final_hidden = torch.cat([self.final_hidden, h], dim=1)
        return self.final_hidden

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows (beam search)."""
        self.store = [None if s is None else s.index_select(1, index) for s in self.store]
        if self.final_hidden is not None:
            self.final_hidden = self.final_hidden.index_select(0, index)
