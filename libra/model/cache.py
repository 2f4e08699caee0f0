"""KV cache of the bridge attention, free of the reference's cache problems (docs/design.md §4.1, P5, B13).

The bridge gives every position two post-RoPE key/value sets, each (B, H, T, D): the one text queries
read (K^T, V^T: image keys and values carry their bridge term) and the one image queries read (K^V, V^V:
text keys and values carry theirs). A cached position's modality never changes, so the bridge terms are
folded in once, when the position is written.

What is kept is what later queries read. The text-query set is always kept: it is as large as a LLaMA
cache. The image-query set (another LLaMA-sized set) is kept only while image queries can still come
(`image_queries`): in generation a row stays text once it is on a text slot, so a prompt that ends on
text (a chat turn about an image) never needs it, and image generation drops it once every row has
finished its image (`stop_image_queries`). Without the bridge (`use_bridge=False`) both query kinds
read the one set, so the cache never holds a second one.

Storage is preallocated and grown by doubling, so a decoding step writes in place instead of re-copying
the cache. A static cache (`max_length`) is allocated once at its full length and zero-filled; a
decoding step then writes one slot at the device position `position` and attends over every slot with a
key mask (`decode_key_mask`), so the shapes of a step never change (torch.compile, CUDA graphs).
In '2d' mode the cache also keeps the final hidden states of every position (the 2d head looks R - 1
slots back).
"""

import torch

KeyValues = tuple[torch.Tensor, torch.Tensor]  # (keys, values), each (B, H, T, D)


def _holds(storage: torch.Tensor | None, new: torch.Tensor, time_dim: int) -> bool:
    """Whether a static storage can take `new` (same shape but along time, dtype and device)."""
    if storage is None:
        return False
    same = (
        storage.shape[:time_dim] + storage.shape[time_dim + 1 :]
        == new.shape[:time_dim] + new.shape[time_dim + 1 :]
    )
    return same and storage.dtype == new.dtype and storage.device == new.device


def _static(t: torch.Tensor) -> torch.Tensor:
    """Storage of a static cache keeps its address for its lifetime: tell torch.compile (CUDA graphs
    then write it in place instead of copying it in and out at every step)."""
    torch._dynamo.mark_static_address(t)
    return t


class LibraCache:
    def __init__(self, num_layers: int, image_queries: bool = True, max_length: int | None = None):
        self.num_layers = num_layers
        self.length = 0  # positions stored and committed (advanced after the last layer of a forward)
        self.image_queries = image_queries  # False: no later query is an image token (see the docstring)
        self.max_length = max_length  # static cache: its fixed length; None: grown on demand
        # per layer (2, B, H, capacity, D): [keys ; values] seen by text queries and by image queries
        self.text_set: list[torch.Tensor | None] = [None] * num_layers
        self.image_set: list[torch.Tensor | None] = [None] * num_layers
        self.final_hidden: torch.Tensor | None = None  # (B, T, C), '2d' mode only
        self.capacity_hint = 0  # total length expected (set by generate), so decoding never reallocates
        # static cache only: the next slot to write, on the device, and which written keys are padding
        self.position: torch.Tensor | None = None  # (1,) long
        self.key_valid: torch.Tensor | None = None  # (B, max_length) bool; slots not yet written: True

    @property
    def is_static(self) -> bool:
        return self.max_length is not None

    def get_seq_length(self) -> int:
        return self.length

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values (the '2d' hidden states excluded)."""
        return sum(s.nbytes for s in self.text_set + self.image_set if s is not None)

    def _buffer(self, store: list, layer: int, new: torch.Tensor, end: int) -> torch.Tensor:
        """The (2, B, H, capacity, D) storage of one layer, allocated or grown to hold `end` positions."""
        buf = store[layer]
        if self.is_static:
            self._check_fits(end)
            if not _holds(buf, new, 3):
                # zeros, not garbage: masked slots still enter the attention products (0 weight x value);
                # a reused storage holds an earlier sequence's values, finite as well
                store[layer] = buf = _static(new.new_zeros(*new.shape[:3], self.max_length, new.shape[4]))
            return buf
        if buf is None or buf.shape[3] < end:
            old = buf.shape[3] if buf is not None else 0
            grown = new.new_empty(*new.shape[:3], max(end, 2 * old, self.capacity_hint), new.shape[4])
            if buf is not None:
                grown[:, :, :, : self.length] = buf[:, :, :, : self.length]
            store[layer] = buf = grown
        return buf

    def _check_fits(self, end: int) -> None:
        if end > self.max_length:
            raise ValueError(
                f"LibraCache: {end} positions do not fit the static cache of max_length "
                f"{self.max_length}; build it with a larger max_length."
            )

    def _write(self, store: list, layer: int, keys: torch.Tensor, values: torch.Tensor, position):
        new = torch.stack([keys, values])  # (2, B, H, N, D)
        if position is not None:
            # static decoding step: one slot at a device position, every slot read; `length` is not read
            # here, so traced code does not depend on it (the storage exists since the prompt)
            buf = store[layer]
            buf.index_copy_(3, position, new)
            return buf[0], buf[1]
        end = self.length + new.shape[3]
        buf = self._buffer(store, layer, new, end)
        buf[:, :, :, self.length : end] = new
        return buf[0, :, :, :end], buf[1, :, :, :end]

    def update(
        self,
        layer: int,
        text_set: KeyValues,
        image_set: KeyValues | None,
        position: torch.Tensor | None = None,
    ) -> tuple[KeyValues, KeyValues | None]:
        """Write the new positions of one layer; return both sets over all positions (B, H, T, D).

        `image_set` is None when the forward built no separate set for image queries (no bridge, or no
        image query can read it). `position` (static cache, decoding step): write the single new
        position at that device slot and return the whole fixed-length storage.
        """
        text = self._write(self.text_set, layer, *text_set, position)
        if image_set is None:
            return text, None
        if self.image_queries:
            return text, self._write(self.image_set, layer, *image_set, position)
        if position is None and self.length == 0:  # a prompt's own image queries need no past
            return text, image_set
        raise ValueError(
            "LibraCache: this forward has image queries, but the cache was built with image_queries=False "
            "(it keeps only the keys/values text queries read); build it with image_queries=True."
        )

    def begin_forward(self, attention_mask: torch.Tensor | None, batch: int, device: torch.device) -> None:
        """Static cache, before a forward that writes by slices (a prompt): record which keys so far are
        padding ((B, past + N) 0/1 mask, None = none) and create the device position."""
        if self.position is None or self.position.device != device or self.key_valid.shape[0] != batch:
            self.position = _static(torch.tensor([self.length], device=device))
            self.key_valid = _static(torch.ones(batch, self.max_length, dtype=torch.bool, device=device))
        if attention_mask is not None:
            self._check_fits(attention_mask.shape[1])
            self.key_valid[:, : attention_mask.shape[1]] = attention_mask.bool()

    def decode_key_mask(self) -> torch.Tensor:
        """Static cache, inside a decoding step: (B, max_length) keys a query at `position` may see."""
        slots = torch.arange(self.max_length, device=self.position.device)
        return self.key_valid & (slots <= self.position)[None]

    def advance(self, n: int) -> None:
        self.length += n
        if self.position is not None:
            self.position.fill_(self.length)

    def reset(self, image_queries: bool) -> None:
        """Empty the cache for a new sequence and keep its storage where it is: generate reuses one
        static cache, since CUDA graphs replay only while what they write stays at its address."""
        self.length = 0
        self.image_queries = image_queries
        if self.position is not None:
            self.position.zero_()
            self.key_valid.fill_(True)

    def stop_image_queries(self) -> None:
        """No later query is an image token: free the key/value set only image queries read."""
        self.image_queries = False
        self.image_set = [None] * self.num_layers

    def append_final_hidden(self, h: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """Append (B, N, C) final hidden states of the new positions; return those of all positions.

        Called after `advance`, so the new positions end at `length`. Static cache: the storage is
        (B, max_length, C); a decoding step (before its `advance`) writes its one position at `position`
        and gets the whole storage back."""
        if self.is_static:
            if not _holds(self.final_hidden, h, 1):
                self.final_hidden = _static(h.new_zeros(h.shape[0], self.max_length, h.shape[2]))
            if position is not None:
                self.final_hidden.index_copy_(1, position, h)
                return self.final_hidden
            self.final_hidden[:, self.length - h.shape[1] : self.length] = h
            return self.final_hidden[:, : self.length]
        if self.final_hidden is None:
            self.final_hidden = h
        else:
            self.final_hidden = torch.cat([self.final_hidden, h], dim=1)
        return self.final_hidden

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows (beam search)."""
        if self.is_static:
            raise ValueError("LibraCache: a static cache cannot reorder rows (beam search).")
        self.text_set = [None if s is None else s.index_select(1, index) for s in self.text_set]
        self.image_set = [None if s is None else s.index_select(1, index) for s in self.image_set]
        if self.final_hidden is not None:
            self.final_hidden = self.final_hidden.index_select(0, index)
