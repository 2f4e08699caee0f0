"""The Libra network, top to bottom: routed visual expert + cross-modal bridge (paper §3; docs/design.md §3).

Every position is a text token or an image token, decided by `vision_indices` (< max_vision_token_length
marks an image slot). Text tokens run through the LLaMA-2 weights, image tokens through the parallel
low-rank "vision_*" weights, and both share one causal attention in which a rank-`bridge_rank` correction
is added to keys and values only for cross-modal (query, key) pairs.

How the routing is done: at the start of a forward the flattened (B*N) positions are sorted once into
[text rows ; image rows] (`Routing`). Every position-wise module (norms, projections, MLP, heads) then
works on two contiguous slices of that sorted tensor, and only the attention goes back to sequence order
(one gather in, one gather per pass out). No layer indexes with a boolean mask, so there is no
device-to-host sync inside the layers; the forward reads the device once (`read_batch_facts`).

Attention: the two key/value sets of the bridge (docs/design.md §3.5) are attended with two fused
`scaled_dot_product_attention` passes, one per set, and each query row keeps the output of its own
modality's set. The text pass covers all queries; the image pass only the columns that hold image
tokens (`AttentionLayout`). No N x N score matrix is built.

Parameter names equal the official checkpoint's (docs/design.md §2.2), so official folders load with
`from_pretrained` unchanged; its constant buffers (docs/design.md §2.3) are ignored on load and
computed on the fly.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .cache import LibraCache
from .config import LibraConfig
from .loss import libra_loss


class LibraRMSNorm(nn.Module):
    """RMSNorm with the reference's order of operations: normalise and scale in fp32, then cast back."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32).to(x.dtype)


class LibraLinear(nn.Module):
    """Bias-free factorised linear y = B(A x), two matmuls as in the checkpoint (docs/design.md §2.1).

    rank=None: rank = out_features // down_ratio (vision expert); rank=r: the bridge projections.
    """

    def __init__(self, in_features: int, out_features: int, down_ratio: int = 4, rank: int | None = None):
        super().__init__()
        self.is_bridge = rank is not None
        rank = rank if rank is not None else out_features // down_ratio
        self.weight_A = nn.Parameter(torch.empty(rank, in_features))
        self.weight_B = nn.Parameter(torch.empty(out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.weight_A), self.weight_B)


class LowRankGroups(nn.Module):
    """Base of modules that run groups of LibraLinear sharing one input (attention, MLP; docs/design.md P3).

    A group's A factors are stacked into one matrix, so one wide GEMM replaces several skinny ones (the
    stacked A is only (sum of ranks, in) large); the B factors stay separate. While the module trains or
    autograd records a trainable factor, the stack is rebuilt by torch.cat on every call, which passes the
    gradient on to each module's own parameter. Otherwise (eval mode, inference) it is built once and
    reused while every factor keeps its storage, dtype and version counter (each in-place update of a
    parameter bumps it, load_state_dict included). Entering train mode or moving the module (`.to`,
    `.half`) drops the stacks: DeepSpeed's optimizers write parameters through `.data`, which the version
    counter does not see. ZeRO-3 parameters (gathered per forward) and traced code (torch.compile)
    always concatenate.
    """

    def __init__(self):
        super().__init__()
        self._stacks: dict[str, tuple[tuple, torch.Tensor]] = {}

    def stacked_A(self, name: str, layers: list["LibraLinear"]) -> torch.Tensor:
        weights = [layer.weight_A for layer in layers]
        if (
            torch.compiler.is_compiling()
            or self.training
            or (torch.is_grad_enabled() and any(w.requires_grad for w in weights))
            or any(hasattr(w, "ds_id") for w in weights)
        ):
            return torch.cat(weights)
        key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights)
        cached = self._stacks.get(name)
        if cached is None or cached[0] != key:
            cached = self._stacks[name] = (key, torch.cat(weights))
        return cached[1]

    def low_rank_group(self, name: str, x: torch.Tensor, layers: list["LibraLinear"]) -> list[torch.Tensor]:
        """[layer(x) for layer in layers], the A factors as one GEMM; no work at all for zero rows."""
        if any(type(layer) is not LibraLinear for layer in layers):
            # replaced by a LoRA-adapted copy (libra/train/lora.py): only its own forward adds the adapters
            return [layer(x) for layer in layers]
        if x.shape[0] == 0:  # e.g. no image token in a decoding step: not even the stack is needed
            # every output is a zero-row tensor: share one per width (the input serves for its own)
            empty = {x.shape[1]: x}
            for layer in layers:
                width = layer.weight_B.shape[0]
                if width not in empty:
                    empty[width] = x.new_zeros(0, width)
            return [empty[layer.weight_B.shape[0]] for layer in layers]
        ranks = [layer.weight_A.shape[0] for layer in layers]
        z = F.linear(x, self.stacked_A(name, layers))  # (n, sum of ranks)
        return [F.linear(zi, layer.weight_B) for zi, layer in zip(z.split(ranks, dim=-1), layers)]

    def train(self, mode: bool = True):
        self._stacks.clear()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        self._stacks.clear()
        return super()._apply(fn, recurse)


@dataclass
class Routing:
    """Which flattened positions are text and which are image tokens, computed once per forward.

    `perm` lists the flat (b * N + n) positions sorted as [text ; image]; `inverse` maps a flat position
    to its row in that sorted order. `n_text` is a Python int, so slices cost nothing. With one modality
    only (a text-only batch, a decoding step of text rows) the sorted order is the sequence order: no
    gather is needed, and nothing of the other modality runs.
    """

    perm: torch.Tensor  # (B*N,) long
    inverse: torch.Tensor  # (B*N,) long
    n_text: int
    vision_mask: torch.Tensor  # (B, N) bool

    @classmethod
    def from_vision_mask(cls, vision_mask: torch.Tensor, n_vision: int | None = None) -> "Routing":
        """`n_vision` (number of image slots) may be given when the caller already read it from the device."""
        flat = vision_mask.reshape(-1)
        n_vision = int(flat.sum().item()) if n_vision is None else n_vision
        if n_vision in (0, flat.numel()):  # one modality (a decoding step of text): sequence order
            perm = torch.arange(flat.numel(), device=flat.device)
            return cls(perm=perm, inverse=perm, n_text=flat.numel() - n_vision, vision_mask=vision_mask)
        # a stable sort keeps sequence order inside each modality
        perm = torch.sort(flat.to(torch.int8), stable=True).indices
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        return cls(perm=perm, inverse=inverse, n_text=flat.numel() - n_vision, vision_mask=vision_mask)

    @property
    def n_vision(self) -> int:
        return self.perm.numel() - self.n_text

    @property
    def one_modality(self) -> bool:
        """All rows text or all image: a stable sort leaves them in sequence order (perm = identity)."""
        return self.n_text in (0, self.perm.numel())

    def to_sorted(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) in sequence order -> (B*N, ...) sorted [text ; image]."""
        x = x.reshape(-1, *x.shape[2:])
        return x if self.one_modality else x.index_select(0, self.perm)

    def to_sequence(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B*N, ...) sorted [text ; image] -> (B, N, ...) in sequence order."""
        x = x if self.one_modality else x.index_select(0, self.inverse)
        return x.view(batch, -1, *x.shape[1:])

    def sorted_rows(self, x: torch.Tensor, text: bool) -> torch.Tensor:
        """The text (or image) rows of a (B*N, ...) tensor in sequence order, in sorted order."""
        if self.one_modality:
            return x if (self.n_text > 0) == text else x[:0]
        return x.index_select(0, self.perm[: self.n_text] if text else self.perm[self.n_text :])

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[: self.n_text], x[self.n_text :]


def routed(x: torch.Tensor, routing: Routing, text_fn, vision_fn) -> torch.Tensor:
    """Apply text_fn to the text rows and vision_fn to the image rows of a sorted (B*N, ...) tensor."""
    if routing.one_modality:  # every row is of one kind (a decoding step of text rows): no split
        return text_fn(x) if routing.n_vision == 0 else vision_fn(x)
    return join_rows(routing, text_fn, vision_fn, *routing.split(x))


def join_rows(routing: Routing, text_fn, vision_fn, x_text, x_vision) -> torch.Tensor:
    """[text_fn(x_text) ; vision_fn(x_vision)] along rows; a modality without rows is not run at all."""
    if routing.n_vision == 0:
        return text_fn(x_text)
    if routing.n_text == 0:
        return vision_fn(x_vision)
    return torch.cat([text_fn(x_text), vision_fn(x_vision)], dim=0)


def cat_rows(text_rows: torch.Tensor, vision_rows: torch.Tensor) -> torch.Tensor:
    """torch.cat of the two modalities' rows, without the copy when one of them has none."""
    if vision_rows.shape[0] == 0:
        return text_rows
    if text_rows.shape[0] == 0:
        return vision_rows
    return torch.cat([text_rows, vision_rows])


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos/sin tables (B, 1, N, D) for 1-D RoPE with base 10000, computed in fp32 (HF-LLaMA rotate-half)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # (B, N, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, N, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class LibraAttention(LowRankGroups):
    """Causal self-attention, routed q/k/v/o, cross-modal bridge on keys and values (docs/design.md §3.5)."""

    def __init__(self, config: LibraConfig, layer_idx: int):
        super().__init__()
        C, r = config.hidden_size, config.vision_down_ratio
        self.layer_idx = layer_idx
        self.n_head = config.num_attention_heads
        self.head_dim = config.head_dim
        self.use_bridge = config.use_bridge
        self.attn_pdrop = config.attn_pdrop
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.vision_q_proj = LibraLinear(C, C, r)
        self.vision_k_proj = LibraLinear(C, C, r)
        self.vision_v_proj = LibraLinear(C, C, r)
        self.vision_o_proj = LibraLinear(C, C, r)
        if config.use_bridge:
            # "_on_language" acts on text keys/values and is seen only by image queries, and vice versa
            self.vision_k_bridge_on_language = LibraLinear(C, C, rank=config.bridge_rank)
            self.vision_k_bridge_on_vision = LibraLinear(C, C, rank=config.bridge_rank)
            self.vision_v_bridge_on_language = LibraLinear(C, C, rank=config.bridge_rank)
            self.vision_v_bridge_on_vision = LibraLinear(C, C, rank=config.bridge_rank)

    def text_bridges(self, h_text: torch.Tensor) -> list[torch.Tensor]:
        """The bridge terms of text keys and values, seen only by image queries."""
        bridges = [self.vision_k_bridge_on_language, self.vision_v_bridge_on_language]
        return self.low_rank_group("text_bridge", h_text, bridges)

    def forward(
        self,
        h: torch.Tensor,
        routing: Routing,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn: "AttentionLayout",
        cache: LibraCache | None,
    ) -> torch.Tensor:
        """h: normed input, sorted (B*N, C). Returns the routed o_proj output, sorted (B*N, C)."""
        B, N = routing.vision_mask.shape
        H, D = self.n_head, self.head_dim
        h_text, h_vision = routing.split(h)
        has_image_queries = routing.n_text < B * N
        # the key/value set of image queries is built only if some query reads it, now or from the cache
        image_set = self.use_bridge and (has_image_queries or (cache is not None and cache.image_queries))
        q_text, k_text, v_text = self.q_proj(h_text), self.k_proj(h_text), self.v_proj(h_text)
        # image rows: the A factors of q/k/v (and the bridges) share their input, so run them as one GEMM
        vision = [self.vision_q_proj, self.vision_k_proj, self.vision_v_proj]
        if self.use_bridge:
            vision += [self.vision_k_bridge_on_vision, self.vision_v_bridge_on_vision]
        q_vision, k_vision, v_vision, *bridge_vision = self.low_rank_group("vision", h_vision, vision)
        parts = [cat_rows(q_text, q_vision)]
        if self.use_bridge and routing.n_vision:  # the set text queries read: image keys carry their bridge
            kb_vision, vb_vision = bridge_vision
            parts += [cat_rows(k_text, k_vision + kb_vision), cat_rows(v_text, v_vision + vb_vision)]
        else:  # one key/value set serves both modalities (no bridge), or no image row has a term to add
            parts += [cat_rows(k_text, k_vision), cat_rows(v_text, v_vision)]
        # with no cache to keep it, the image queries' set is needed only before the end of the last image
        prefix = attn.image_prefix if image_set and not (cache is not None and cache.image_queries) else None
        full_image_set = image_set and prefix is None
        if full_image_set:  # key/value set seen by image queries: text keys carry their bridge term
            kb_text, vb_text = self.text_bridges(h_text)
            parts += [cat_rows(k_text + kb_text, k_vision), cat_rows(v_text + vb_text, v_vision)]
        S = len(parts)
        qkv = routing.to_sequence(torch.stack(parts, dim=1), B)  # (B, N, S, C) in sequence order
        # unbind, not indexing: its backward stacks the S gradients once, where each index's backward
        # would zero-fill a full (S, B, H, N, D) buffer
        qkv = qkv.view(B, N, S, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # S x (B, H, N, D)
        cos, sin = rope
        q, k_t, v_t = apply_rope(qkv[0], cos, sin), apply_rope(qkv[1], cos, sin), qkv[2]
        kv_v = None
        if full_image_set:
            kv_v = (apply_rope(qkv[3], cos, sin), qkv[4])
        elif prefix is not None:  # the same set over positions [0, hi) only: text rows there, every image row
            text_rows, to_sequence = prefix
            hi = attn.vision_span[1]
            kb_text, vb_text = self.text_bridges(h_text.index_select(0, text_rows))
            k_pre = cat_rows(k_text.index_select(0, text_rows) + kb_text, k_vision)
            v_pre = cat_rows(v_text.index_select(0, text_rows) + vb_text, v_vision)
            kv = torch.stack([k_pre, v_pre], dim=1).index_select(0, to_sequence)  # (B*hi, 2, C)
            kv = kv.view(B, hi, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, hi, D)
            kv_v = (apply_rope(kv[0], cos[:, :, :hi], sin[:, :, :hi]), kv[1])
        if cache is not None:  # (B, H, P+N, D) each
            (k_t, v_t), kv_v = cache.update(self.layer_idx, (k_t, v_t), kv_v, attn.cache_position)

        dropout = self.attn_pdrop if self.training else 0.0
        out_text = out_vision = None  # a modality without rows needs no output
        if self.use_bridge and attn.text_tail_mask is not None and k_t.shape[2] == N:
            # text queries only: the columns before the image (keys before them) and after it
            lo, hi = attn.vision_span
            outs = []
            if lo > 0:
                outs.append(
                    F.scaled_dot_product_attention(
                        q[:, :, :lo], k_t[:, :, :lo], v_t[:, :, :lo], is_causal=True, dropout_p=dropout
                    )
                )
            if hi < N:
                outs.append(
                    F.scaled_dot_product_attention(
                        q[:, :, hi:], k_t, v_t, attn_mask=attn.text_tail_mask, dropout_p=dropout
                    )
                )
            out_t = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, H, N - (hi - lo), D)
            out_text = out_t.transpose(1, 2).reshape(routing.n_text, H * D)
        elif routing.n_text > 0 or not self.use_bridge:
            out_t = F.scaled_dot_product_attention(
                q, k_t, v_t, attn_mask=attn.mask, is_causal=attn.is_causal, dropout_p=dropout
            )  # (B, H, N, D)
            out_t = out_t.transpose(1, 2).reshape(B * N, H * D)
            out_text = routing.sorted_rows(out_t, text=True)
            if not self.use_bridge:  # a single key/value set: the text pass already serves image queries
                out_vision = routing.sorted_rows(out_t, text=False)
        if self.use_bridge and has_image_queries:
            # image queries only need the columns [lo, hi) that hold them, against keys [0, past + hi)
            k_v, v_v = kv_v
            lo, hi = attn.vision_span
            end = k_v.shape[2] - (N - hi) if prefix is None else hi
            first = attn.vision_first_query  # lo, or 0 when the plain causal pass over [0, hi) is cheaper
            out_v = F.scaled_dot_product_attention(
                q[:, :, first:hi],
                k_v[:, :, :end],
                v_v[:, :, :end],
                attn_mask=attn.vision_mask,
                is_causal=attn.vision_is_causal,
                dropout_p=dropout,
            )[:, :, lo - first :]  # (B, H, hi - lo, D)
            out_v = out_v.transpose(1, 2).reshape(B * (hi - lo), H * D)
            out_vision = out_v.index_select(0, attn.vision_rows)
        return join_rows(routing, self.o_proj, self.vision_o_proj, out_text, out_vision)


@dataclass
class AttentionLayout:
    """What the two SDPA passes need, built once per forward and shared by every layer.

    Text pass: all N queries, `is_causal` or a boolean (B, 1, N, P+N) mask. Image pass: only the query
    columns [lo, hi) that contain image tokens (an image is one contiguous block, so for a long text
    sample this pass is short), with `vision_rows` picking the image rows out of its (B * (hi - lo))
    outputs in sorted order. `cache_position` is set only in a decoding step on a static cache: the
    keys are then the cache's whole fixed-length storage and the masks say which slots count.

    `image_prefix` serves the image pass when no cache keeps its keys: image queries read only the
    positions before `hi`, so their key/value set is built there only (in a 2048-position sample with a
    578-token image near the start, a third of the positions). It holds the sorted text rows before `hi`
    and, for each position (b, n < hi) in sequence order, its row in [those text rows ; every image row].

    `text_tail_mask` is set when every row holds an image in exactly the columns [lo, hi) and no mask is
    needed (training, an unpadded prefill): the text pass then runs on the text columns only, [0, lo)
    under the plain causal mask and [hi, N) under this (N - hi, N) one, instead of computing and dropping
    the image columns' outputs (a LAION sample: 72 text queries of 650). Its outputs, row-major over
    (b, text column), are the text rows in sorted order already (the routing sort is stable). A masked
    pass cannot skip the blocks above the diagonal, so this is done only where it computes fewer
    query x key blocks than the whole causal pass (not for 1469 text queries after the image in 2048).
    """

    mask: torch.Tensor | None
    is_causal: bool
    vision_span: tuple[int, int]
    vision_mask: torch.Tensor | None
    vision_is_causal: bool
    vision_rows: torch.Tensor | None
    cache_position: torch.Tensor | None = None
    image_prefix: tuple[torch.Tensor, torch.Tensor] | None = None
    text_tail_mask: torch.Tensor | None = None
    vision_first_query: int = 0  # the image pass computes query columns [this, hi), keeps [lo, hi)

    @classmethod
    def for_decoding_step(cls, cache: LibraCache, routing: Routing) -> "AttentionLayout":
        """One new position per row against every slot of a static cache (no host read, fixed shapes)."""
        mask = cache.decode_key_mask()[:, None, None, :]  # (B, 1, 1, max_length)
        if routing.n_text == routing.perm.numel():
            return cls(mask, False, (0, 0), None, False, None, cache.position)
        return cls(mask, False, (0, 1), mask, False, routing.perm[routing.n_text :], cache.position)

    @classmethod
    def build(cls, attention_mask, routing, n_past: int, left_padded: bool, padded: bool, vision_span):
        B, N = routing.vision_mask.shape
        device = routing.perm.device
        lo, hi = vision_span
        valid = attention_mask.bool() if attention_mask is not None else None

        def mask_for(q_lo: int, q_hi: int):
            q_pos = torch.arange(n_past + q_lo, n_past + q_hi, device=device)[:, None]
            k_pos = torch.arange(n_past + q_hi, device=device)[None, :]
            allowed = (k_pos <= q_pos)[None]  # (1, q, k)
            if valid is not None:
                allowed = allowed & valid[:, None, : n_past + q_hi]
            # a padded query would otherwise see no key at all; letting it see itself avoids NaN rows
            return (allowed | (k_pos == q_pos)[None])[:, None]  # (B or 1, 1, q, k)

        if n_past == 0 and not left_padded:
            # right padding only: real queries never see a padded key under the causal mask, and padded
            # query rows are never read (labels are -100 there), so no explicit mask is needed
            mask, is_causal = None, N > 1
        elif N == 1 and not padded:
            # a decoding step without padding: its one query sees every key, and SDPA runs mask-free
            mask, is_causal = None, False
        else:
            mask, is_causal = mask_for(0, N), False
        vision_mask, vision_is_causal, vision_rows, image_prefix = None, False, None, None
        vision_first_query = lo
        if routing.n_text < B * N:
            if (lo, hi) == (0, N):
                vision_mask, vision_is_causal = mask, is_causal
            elif mask is None and is_causal and 2 * lo < hi:
                # the queries [0, hi) under the plain causal mask, the first lo outputs dropped: hi^2 / 2
                # query x key blocks, where the (hi - lo, hi) mask below makes the kernel compute all
                vision_is_causal, vision_first_query = True, 0
            else:
                vision_mask = mask_for(lo, hi)
            flat = routing.perm[routing.n_text :]
            vision_rows = flat // N * (hi - lo) + flat % N - lo
            if n_past == 0:
                # sorting the sorted-order rows of the positions before hi gives [text rows there ; every
                # image row] (every image slot lies before hi), and the sort's order maps them back
                rows, order = torch.sort(routing.inverse.view(B, N)[:, :hi].reshape(-1))
                to_sequence = torch.empty_like(order)
                to_sequence[order] = torch.arange(order.numel(), device=device)
                image_prefix = (rows[: B * hi - routing.n_vision], to_sequence)
        text_tail_mask = None
        same_columns = hi > lo and routing.n_vision == B * (hi - lo)  # each row's image fills [lo, hi)
        # query x key blocks computed: lo^2 / 2 causal, then (N - hi) x N under a mask (no causal skipping),
        # against N^2 / 2 for the whole causal pass
        fewer_blocks = lo * lo + 2 * (N - hi) * N < N * N
        if is_causal and routing.n_text > 0 and same_columns and fewer_blocks:
            text_tail_mask = mask_for(hi, N)  # (B or 1, 1, N - hi, N)
        return cls(
            mask, is_causal, (lo, hi), vision_mask, vision_is_causal, vision_rows,
            image_prefix=image_prefix, text_tail_mask=text_tail_mask, vision_first_query=vision_first_query,
        )  # fmt: skip


class LibraMLP(LowRankGroups):
    """SwiGLU MLP: dense for text rows, low-rank (LibraLinear) for image rows (docs/design.md §3.6)."""

    def __init__(self, config: LibraConfig):
        super().__init__()
        C, inner, r = config.hidden_size, config.intermediate_size, config.vision_down_ratio
        self.gate_proj = nn.Linear(C, inner, bias=False)
        self.up_proj = nn.Linear(C, inner, bias=False)
        self.down_proj = nn.Linear(inner, C, bias=False)
        self.vision_gate_proj = LibraLinear(C, inner, r)
        self.vision_up_proj = LibraLinear(C, inner, r)
        self.vision_down_proj = LibraLinear(inner, C, r)

    def forward(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        return routed(h, routing, self.text_mlp, self.vision_mlp)

    def text_mlp(self, h: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    def vision_mlp(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.low_rank_group("gate_up", h, [self.vision_gate_proj, self.vision_up_proj])
        return self.vision_down_proj(F.silu(gate) * up)


class LibraDecoderLayer(nn.Module):
    """Pre-norm LLaMA block whose norms, projections and MLP are routed by modality (docs/design.md §3.4)."""

    def __init__(self, config: LibraConfig, layer_idx: int):
        super().__init__()
        C, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = LibraRMSNorm(C, eps)
        self.post_attention_layernorm = LibraRMSNorm(C, eps)
        self.vision_input_layernorm = LibraRMSNorm(C, eps)
        self.vision_post_attention_layernorm = LibraRMSNorm(C, eps)
        self.self_attn = LibraAttention(config, layer_idx)
        self.mlp = LibraMLP(config)
        self.resid_drop = nn.Dropout(config.resid_pdrop)
        self.vision_resid_drop = nn.Dropout(config.vision_resid_pdrop)

    def resid_dropout(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        if not self.training:  # the identity: not even a module call per residual (decoding steps)
            return x
        if self.resid_drop.p == self.vision_resid_drop.p:  # same rate: no need to split (no copy)
            return self.resid_drop(x)
        return routed(x, routing, self.resid_drop, self.vision_resid_drop)

    def forward(self, x, routing, rope, attn, cache=None):
        """x: residual stream sorted (B*N, C) -> same shape."""
        h = routed(x, routing, self.input_layernorm, self.vision_input_layernorm)
        x = x + self.resid_dropout(self.self_attn(h, routing, rope, attn, cache), routing)
        h = routed(x, routing, self.post_attention_layernorm, self.vision_post_attention_layernorm)
        return x + self.resid_dropout(self.mlp(h, routing), routing)


class LibraPreTrainedModel(PreTrainedModel):
    config_class = LibraConfig
    config: LibraConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LibraDecoderLayer"]
    _supports_sdpa = True
    # constant buffers of the official checkpoint (docs/design.md §2.3): accepted if present, recomputed
    _keys_to_ignore_on_load_unexpected = [
        r"rotary_emb\.inv_freq",
        r"^naive_placeholder$",
        r"^vision_logits_placeholder$",
        r"^language_logits_placeholder$",
        r"^eoi_to_newline_logits_placeholder$",
        r"pos_offset$",
    ]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """HF-style init of the official code: N(0, std) everywhere, bridges' weight_B zero, norms one."""
        std = self.config.initializer_range
        if isinstance(module, LibraLinear):
            init.normal_(module.weight_A, mean=0.0, std=std)
            # the bridges start at exactly zero so a fresh Libra equals the LLaMA it was built from
            if module.is_bridge:
                init.zeros_(module.weight_B)
            else:
                init.normal_(module.weight_B, mean=0.0, std=std)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, LibraRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, LibraForCausalLM):
            init.normal_(module.vision_hidden_placeholder, mean=0.0, std=std)


@dataclass
class LibraModelOutput:
    """Final hidden states in sorted [text ; image] layout plus what the heads and generation need."""

    last_hidden_state: torch.Tensor | None = None  # (B*N, C), sorted, after the routed final norm
    routing: Routing | None = None
    cache: LibraCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None  # each (B, N, C), sequence order


class LibraModel(LibraPreTrainedModel):
    """Embeddings + decoder stack + routed final norm (docs/design.md §3.2, §3.3, §3.4)."""

    def __init__(self, config: LibraConfig):
        super().__init__(config)
        C, S, K = config.hidden_size, config.contiguous_signal_size, config.vision_codebook_num
        self.embed_tokens = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.vision_embed_tokens = nn.ModuleList(
            [nn.Embedding(config.vision_vocab_size, C // K) for _ in range(K)]
        )
        if config.concat_signals:
            if config.norm_signals:
                self.vision_signal_norm = LibraRMSNorm(C + S, config.rms_norm_eps)
            self.vision_contiguous_signal_processor = nn.Linear(C + S, C, bias=False)
        else:
            self.vision_contiguous_signal_processor = nn.Linear(S, C, bias=False)
        if config.use_vision_position_embedding:
            self.vision_position_embedding = nn.Embedding(config.max_vision_token_length, C)
        self.embed_drop = nn.Dropout(config.embd_pdrop)
        self.vision_embed_drop = nn.Dropout(config.vision_embd_pdrop)
        self.layers = nn.ModuleList([LibraDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LibraRMSNorm(C, config.rms_norm_eps)
        self.vision_norm = LibraRMSNorm(C, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def embed(
        self,
        input_ids: torch.Tensor,
        vision_indices: torch.Tensor,
        contiguous_signal: torch.Tensor | None,
        routing: Routing,
    ) -> torch.Tensor:
        """Input embeddings, sorted (B*N, C): text rows, then image rows as in docs/design.md §3.2."""
        cfg = self.config
        K = cfg.vision_codebook_num
        ids = input_ids.reshape(K, -1)
        ids = ids if routing.one_modality else ids.index_select(1, routing.perm)  # (K, B*N) sorted
        e_text = self.embed_drop(self.embed_tokens(ids[0, : routing.n_text]))
        if routing.n_vision == 0:
            return e_text
        vision_ids = ids[:, routing.n_text :] - cfg.vocab_size
        # codebook k fills feature block k: [emb_0(code_0) ; emb_1(code_1)]
        e_vision = torch.cat([self.vision_embed_tokens[k](vision_ids[k]) for k in range(K)], dim=-1)
        vision_rows = routing.perm[routing.n_text :]
        if cfg.use_vision_position_embedding:
            e_vision = e_vision + self.vision_position_embedding(vision_indices.reshape(-1)[vision_rows])
        if contiguous_signal is None:
            signal = e_vision.new_zeros(e_vision.shape[0], cfg.contiguous_signal_size)
        else:
            signal = contiguous_signal.reshape(-1, contiguous_signal.shape[-1])[vision_rows].to(
                e_vision.dtype
            )
        if cfg.concat_signals:
            x = torch.cat([e_vision, signal], dim=-1)  # (n_V, C + S): discrete part first, CLIP part second
            if cfg.norm_signals:
                x = self.vision_signal_norm(x)
            e_vision = self.vision_contiguous_signal_processor(x)
        else:
            e_vision = e_vision + self.vision_contiguous_signal_processor(signal)
        return cat_rows(e_text, self.vision_embed_drop(e_vision))

    def forward(
        self,
        input_ids: torch.Tensor,
        vision_indices: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        contiguous_signal: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: LibraCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> LibraModelOutput:
        cfg = self.config
        check_inputs(cfg, input_ids, vision_indices, attention_mask, contiguous_signal)
        K, B, N = input_ids.shape
        vision_mask = vision_indices < cfg.max_vision_token_length  # (B, N)
        # the one device-to-host read of the forward: routing size, input checks and padding side together
        facts = read_batch_facts(cfg, input_ids, vision_mask, attention_mask)
        n_vision, left_padded, padded, vision_span = facts
        routing = Routing.from_vision_mask(vision_mask, n_vision)

        if use_cache and past_key_values is None:
            past_key_values = LibraCache(cfg.num_hidden_layers)
        cache = past_key_values if use_cache else None
        n_past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.shape[1] != n_past + N:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} columns; with {n_past} cached positions and "
                f"{N} new ones it must have {n_past + N} (mask over cached + new tokens)."
            )
        if position_ids is None:
            position_ids = torch.arange(n_past, n_past + N, device=input_ids.device).expand(B, N)
        if cache is not None and cache.is_static:
            cache.begin_forward(attention_mask, B, input_ids.device)
        attn = AttentionLayout.build(attention_mask, routing, n_past, left_padded, padded, vision_span)

        x = self.embed(input_ids, vision_indices, contiguous_signal, routing)  # (B*N, C) sorted
        rope = rope_cos_sin(position_ids, cfg.head_dim, x.dtype)
        hidden_states = [routing.to_sequence(x, B)] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(layer.__call__, x, routing, rope, attn, None)
            else:
                x = layer(x, routing, rope, attn, cache)
            if output_hidden_states and i < len(self.layers) - 1:
                hidden_states.append(routing.to_sequence(x, B))
        x = routed(x, routing, self.norm, self.vision_norm)
        if output_hidden_states:
            # as in the reference: the last entry is after the final norms, the raw last output is not kept
            hidden_states.append(routing.to_sequence(x, B))
        if cache is not None:
            cache.advance(N)
        return LibraModelOutput(
            last_hidden_state=x,
            routing=routing,
            cache=cache,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )

    def compile_layers(self, **options) -> None:
        """torch.compile every decoder layer in place (`trainer.compile=true`; options go to
        `torch.compile`). A layer traces as one graph, with no graph break, in training and in eval
        (tests assert it); batches with other numbers of text and image rows reuse one graph with dynamic
        sizes after the first recompilation."""
        for layer in self.layers:
            layer.compile(**options)

    def decoding_step(
        self,
        input_ids: torch.Tensor,
        vision_indices: torch.Tensor,
        position_ids: torch.Tensor,
        cache: LibraCache,
        n_vision: int,
    ) -> tuple[torch.Tensor, Routing]:
        """One new position per row ((K, B, 1) ids) on a static cache, with no device-to-host read and
        the same shapes at every step, so that it can be compiled (CUDA graphs included).

        `n_vision`, how many rows hold an image token, comes from the caller, who knows it from the
        vision-index rule; the ids are not checked (the caller chose them). The cache is not advanced:
        the caller does that outside the traced code. Returns the final hidden states (B, C), sorted as
        the routing says, and the routing.
        """
        cfg = self.config
        routing = Routing.from_vision_mask(vision_indices < cfg.max_vision_token_length, n_vision)
        attn = AttentionLayout.for_decoding_step(cache, routing)
        x = self.embed(input_ids, vision_indices, None, routing)  # generated tokens carry no CLIP features
        rope = rope_cos_sin(position_ids, cfg.head_dim, x.dtype)
        for layer in self.layers:
            x = layer(x, routing, rope, attn, cache)
        return routed(x, routing, self.norm, self.vision_norm), routing


def check_inputs(cfg, input_ids, vision_indices, attention_mask, contiguous_signal) -> None:
    """Shape checks of the official call form; errors name the argument and the expected shape."""
    K = cfg.vision_codebook_num
    if input_ids.dim() != 3 or input_ids.shape[0] != K:
        raise ValueError(
            f"input_ids must be (K={K}, B, N) (one row of ids per codebook), got {tuple(input_ids.shape)}."
        )
    B, N = input_ids.shape[1:]
    if vision_indices is None:
        raise ValueError(
            "vision_indices (B, N) is required: it marks image slots (< max_vision_token_length)."
        )
    if tuple(vision_indices.shape) != (B, N):
        raise ValueError(f"vision_indices must be (B, N) = {(B, N)}, got {tuple(vision_indices.shape)}.")
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[0] != B):
        raise ValueError(f"attention_mask must be (B={B}, past + N), got {tuple(attention_mask.shape)}.")
    expected = (B, N, cfg.contiguous_signal_size)
    if contiguous_signal is not None and tuple(contiguous_signal.shape) != expected:
        raise ValueError(
            f"contiguous_signal must be (B, N, contiguous_signal_size) = {expected}, "
            f"got {tuple(contiguous_signal.shape)}."
        )


def read_batch_facts(cfg, input_ids, vision_mask, attention_mask) -> tuple[int, bool, bool, tuple[int, int]]:
    """Number of image slots, whether any row of the new positions is left-padded, whether any key
    (cached or new) is padding, and the column span [lo, hi) holding image slots, read in one sync.
    Also checks that every image slot holds a vision id (>= vocab_size) and every text slot a text id."""
    V, VV, M = cfg.vocab_size, cfg.vision_vocab_size, cfg.max_vision_token_length
    text_ids = input_ids[0]
    bad_text = (~vision_mask & ((text_ids < 0) | (text_ids >= V))).sum()
    bad_vision = (vision_mask & ((input_ids < V) | (input_ids >= V + VV))).sum()
    left_padded = padded = torch.zeros((), dtype=torch.long, device=input_ids.device)
    if attention_mask is not None:
        padded = (attention_mask == 0).sum()
        if attention_mask.shape[1] == vision_mask.shape[1]:
            left_padded = (attention_mask[:, 1:] > attention_mask[:, :-1]).sum()
    columns = vision_mask.any(0)  # (N,)
    position = torch.arange(columns.numel(), device=columns.device)
    lo = torch.where(columns, position, columns.numel()).min()
    hi = torch.where(columns, position + 1, 0).max()
    n_vision, bad_text, bad_vision, left_padded, padded, lo, hi = torch.stack(
        [vision_mask.sum(), bad_text, bad_vision, left_padded, padded, lo, hi]
    ).tolist()
    if bad_text:
        raise ValueError(
            f"input_ids: {bad_text} text slots (vision_indices == {M}) hold ids outside [0, {V}); "
            "image ids belong in slots that vision_indices marks as image."
        )
    if bad_vision:
        raise ValueError(
            f"input_ids: {bad_vision} entries at image slots (vision_indices < {M}) are not vision ids in "
            f"[{V}, {V + VV}); check that vision_indices and input_ids describe the same images."
        )
    return n_vision, left_padded > 0, padded > 0, (lo, hi)


class LibraVisionHead(nn.Module):
    """One classifier per codebook over vision_vocab_size classes (input 2C in '2d' mode)."""

    def __init__(self, config: LibraConfig):
        super().__init__()
        width = config.hidden_size * (2 if config.vision_prediction_mode == "2d" else 1)
        self.heads = nn.ModuleList(
            [
                nn.Linear(width, config.vision_vocab_size, bias=False)
                for _ in range(config.vision_codebook_num)
            ]
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(n, width) -> (K, n, vision_vocab_size)."""
        return torch.stack([head(h) for head in self.heads])


@dataclass
class LibraCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    loss_text: torch.Tensor | None = None  # mean text cross-entropy over text targets
    loss_image: torch.Tensor | None = None  # mean over codebooks of the vision cross-entropy on image targets
    logits: torch.Tensor | None = (
        None  # (K, B, N, vocab_size + vision_vocab_size), -inf in the other modality
    )
    cache: LibraCache | None = None  # transformers 5 names the KV cache `cache` (was past_key_values)
    hidden_states: tuple[torch.Tensor, ...] | None = None


class LibraForCausalLM(LibraPreTrainedModel):
    """LibraModel + the text head `lm_head` and per-codebook `vision_lm_head` (docs/design.md §3.9, §3.10)."""

    _tied_weights_keys = {}

    def __init__(self, config: LibraConfig):
        super().__init__(config)
        self.model = LibraModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.vision_lm_head = LibraVisionHead(config)
        # stands in for a missing neighbour in the '2d' head; present (unused) in every official checkpoint
        self.vision_hidden_placeholder = nn.Parameter(torch.empty(config.hidden_size))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    # ------------------------------------------------------------------ heads
    def vision_head_input(
        self,
        h: torch.Tensor,
        flat_pos: torch.Tensor,
        vision_indices: torch.Tensor,
        history: torch.Tensor | None,
        n_past: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input of the vision head for rows h (n, C) at flat positions b * N + n: (n, C), or (n, 2C) in '2d'.

        2d (docs/design.md §3.9): the row at image slot i predicts code i (grid cell r, c = divmod(i, R)) from
        [state of the cell above ; state of the cell to the left]. The cell to the left is the row's own
        state (slot i holds code i - 1), or boi's own state for i = 0; the cell above sits R - 1 slots back.
        Missing neighbours (first row, first column) are the learned placeholder. The last code slot and
        eoi use [own state ; placeholder]. `history` is the (B, P+N, C) final states of all positions in
        sequence order (cached + new) so that the cell above can lie in the KV-cached past; `n_past` (how
        many of them precede the new positions) defaults to P, and is the device position of a static
        cache, whose history has its fixed length.
        """
        if self.config.vision_prediction_mode == "1d":
            return h
        R = self.config.image_feature_resolution
        B, N = vision_indices.shape
        b, n = flat_pos // N, flat_pos % N
        slot = vision_indices.reshape(-1)[flat_pos]
        placeholder = self.vision_hidden_placeholder.to(h.dtype).expand_as(h)
        n_past = history.shape[1] - N if n_past is None else n_past
        above = history[b, (n_past + n - (R - 1)).clamp(min=0)]
        in_grid = slot < R * R
        has_above = in_grid & (slot >= R)
        has_left = in_grid & ((slot % R != 0) | (slot == 0))
        first = torch.where(has_above[:, None], above, placeholder)
        second = torch.where(has_left[:, None], h, placeholder)
        first = torch.where(in_grid[:, None], first, h)  # last code slot and eoi: [own ; placeholder]
        return torch.cat([first, second], dim=-1)

    def joint_logits(self, text_logits, vision_logits, routing: Routing) -> torch.Tensor:
        """Scatter head outputs into the official (K, B, N, V + VV) layout with -inf in the other modality."""
        K = self.config.vision_codebook_num
        B, N = routing.vision_mask.shape
        V, VV = self.config.vocab_size, self.config.vision_vocab_size
        logits = text_logits.new_full((K, B * N, V + VV), float("-inf"))
        logits[:, routing.perm[: routing.n_text], :V] = text_logits
        logits[:, routing.perm[routing.n_text :], V:] = vision_logits
        return logits.view(K, B, N, V + VV)

    def last_position_logits(
        self, h_sorted, routing: Routing, vision_indices, history, n_past=None
    ) -> torch.Tensor:
        """Joint logits (K, B, 1, V + VV) of the last position of every row only (prefill needs no more)."""
        K = self.config.vision_codebook_num
        B, N = routing.vision_mask.shape
        flat_pos = torch.arange(B, device=h_sorted.device) * N + N - 1
        h = h_sorted.index_select(0, routing.inverse[flat_pos])  # (B, C)
        text = self.lm_head(h)  # (B, V)
        if routing.n_vision == 0:  # every row is text (a decoding step of text rows): no vision head
            minus_inf = text.new_full((K, B, self.config.vision_vocab_size), float("-inf"))
            return torch.cat([text.expand(K, -1, -1), minus_inf], dim=-1)[:, :, None]
        # both heads on these B rows (cheap); the modality of each row picks which one is kept
        vision = self.vision_lm_head(
            self.vision_head_input(h, flat_pos, vision_indices, history, n_past)
        )  # (K, B, VV)
        minus_inf = torch.tensor(float("-inf"), dtype=text.dtype, device=text.device)
        is_vision = routing.vision_mask[:, -1, None]  # (B, 1)
        logits = torch.cat(
            [
                torch.where(is_vision, minus_inf, text).expand(K, -1, -1),
                torch.where(is_vision, vision, minus_inf),
            ],
            dim=-1,
        )
        return logits[:, :, None]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vision_indices: torch.Tensor | None = None,
        contiguous_signal: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: LibraCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool = False,
        return_logits: bool = True,
        last_logits_only: bool = False,
        return_dict: bool = True,
        output_attentions: bool = False,
        cache: LibraCache | None = None,
    ) -> LibraCausalLMOutput:
        """Official call form (docs/design.md §3.1): input_ids and labels (K, B, N), vision_indices (B, N).

        `return_logits=False` skips the (K, B, N, V + VV) logits (training: the loss never needs them);
        `last_logits_only=True` returns them for the last position only, (K, B, 1, V + VV) (generation).
        `cache` is transformers 5's name for `past_key_values`; either may be given. `use_cache` defaults
        to `config.use_cache` in eval mode and to False in train mode.
        """
        if output_attentions:
            raise ValueError("output_attentions=True is not supported: the fused attention keeps no weights.")
        if not return_dict:
            raise ValueError("return_dict=False is not supported; read the fields of the returned output.")
        past_key_values = past_key_values if past_key_values is not None else cache
        if use_cache is None:  # a training forward never reads a cache back: building one only costs
            use_cache = self.config.use_cache and not self.training
        if self.model.gradient_checkpointing and self.training:
            use_cache = False
        out = self.model(
            input_ids,
            vision_indices,
            attention_mask=attention_mask,
            contiguous_signal=contiguous_signal,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        routing = out.routing
        B, N = routing.vision_mask.shape
        h_text, h_vision = routing.split(out.last_hidden_state)
        history = None
        if self.config.vision_prediction_mode == "2d":
            history = routing.to_sequence(out.last_hidden_state, B)
            if out.cache is not None:
                history = out.cache.append_final_hidden(history)

        loss = loss_text = loss_image = None
        if labels is not None:
            vision_in = self.vision_head_input(
                h_vision, routing.perm[routing.n_text :], vision_indices, history
            )
            loss, loss_text, loss_image = libra_loss(
                h_text, vision_in, labels, routing, self.lm_head, self.vision_lm_head, self.config.vocab_size
            )
        logits = None
        if last_logits_only:
            logits = self.last_position_logits(out.last_hidden_state, routing, vision_indices, history)
        elif return_logits:
            vision_in = self.vision_head_input(
                h_vision, routing.perm[routing.n_text :], vision_indices, history
            )
            logits = self.joint_logits(self.lm_head(h_text), self.vision_lm_head(vision_in), routing)
        return LibraCausalLMOutput(
            loss=loss,
            loss_text=loss_text,
            loss_image=loss_image,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
        )

    def decoding_step(
        self,
        input_ids: torch.Tensor,
        vision_indices: torch.Tensor,
        position_ids: torch.Tensor,
        cache: LibraCache,
        n_vision: int,
    ) -> torch.Tensor:
        """Joint logits (K, B, 1, V + VV) of one decoding step on a static cache (see
        `LibraModel.decoding_step`); `generate(..., cache_implementation="static")` runs it, compiled
        with `compile=True`. Inputs are the new position of every row: ids (K, B, 1), (B, 1) vision
        indices and positions."""
        h, routing = self.model.decoding_step(input_ids, vision_indices, position_ids, cache, n_vision)
        history = None
        if self.config.vision_prediction_mode == "2d":
            B = vision_indices.shape[0]
            history = cache.append_final_hidden(routing.to_sequence(h, B), cache.position)
        return self.last_position_logits(h, routing, vision_indices, history, n_past=cache.position)

    # generation lives in generation.py; bound here so `model.generate(...)` works
    from .generation import generate  # noqa: E402

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> "LibraForCausalLM":
        """`PreTrainedModel.from_pretrained`, for every checkpoint kind of the toolkit.

        A local folder goes through `libra.pretrained.resolve_pretrained`: a model folder (export,
        official release) loads as in transformers; a run dir loads its newest export or checkpoint; a
        DeepSpeed `checkpoints/step_*` folder loads its weights (it takes only `dtype`). A Hub id goes
        straight to transformers.
        """
        if not Path(pretrained_model_name_or_path).is_dir():
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        # imported here: the resolver knows the layout of training runs, which the network does not
        from libra.pretrained import load_pretrained_model, resolve_pretrained

        resolved = resolve_pretrained(pretrained_model_name_or_path)
        if resolved.kind == "pretrained":
            return cls._from_model_folder(resolved.weights, *model_args, **kwargs)
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        if model_args or kwargs:
            raise TypeError(
                f"{resolved.describe()}: a DeepSpeed checkpoint loads with dtype= only, got "
                f"{sorted(kwargs) or model_args}"
            )
        return load_pretrained_model(resolved, dtype=dtype)

    @classmethod
    def _from_model_folder(cls, folder: Path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` of a local folder, refusing a Libra checkpoint whose files do
        not fill the model exactly (`libra.pretrained.check_loaded_weights`). A LLaMA folder
        is checked by `from_llama`, whose vision half starts fresh on purpose."""
        import json

        from libra.pretrained import check_loaded_weights

        try:
            libra_checkpoint = json.loads((folder / "config.json").read_text()).get("model_type") == "libra"
        except (OSError, ValueError, AttributeError):  # transformers names the unreadable file below
            libra_checkpoint = False
        wants_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(
            folder,
            *model_args,
            output_loading_info=True,
            # a Libra checkpoint's mismatches come back in `info`, to be named with the folder below
            ignore_mismatched_sizes=ignore_mismatched or libra_checkpoint,
            **kwargs,
        )
        if libra_checkpoint:
            check_loaded_weights(folder, model.config, info, ignore_mismatched)
        return (model, info) if wants_info else model

    @classmethod
    def from_llama(cls, folder, dtype: torch.dtype | None = None, **config_overrides) -> "LibraForCausalLM":
        """Stage-1 model from a LLaMA-2 HF folder; see `libra.model.from_llama`."""
        from .from_llama import load_llama_as_libra

        return load_llama_as_libra(cls, folder, dtype=dtype, **config_overrides)
