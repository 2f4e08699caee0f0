"""The fused bridge attention against a naive one (materialised scores) written from docs/design.md §3.5."""

import pytest
import torch

from libra.model import LibraConfig
from libra.model.modeling import AttentionLayout, LibraAttention, Routing, rope_cos_sin, rotate_half

C, H, B, N = 32, 4, 3, 40


def _rope(x, pos):
    cos, sin = rope_cos_sin(pos, x.shape[-1], x.dtype)
    return x * cos + rotate_half(x) * sin


def naive_bridge_attention(attn, h, vision, attention_mask, pos):
    """The reference algorithm: boolean routing, two full score matrices, rows merged by query modality."""

    def route(x, text_fn, vision_fn):
        out = torch.zeros(*x.shape[:-1], C)
        out[~vision] = text_fn(x[~vision])
        out[vision] = vision_fn(x[vision])
        return out

    def heads(x):  # (B, N, C) -> (B, H, N, D)
        return x.view(B, N, H, C // H).transpose(1, 2)

    q = route(h, attn.q_proj, attn.vision_q_proj)
    k = route(h, attn.k_proj, attn.vision_k_proj)
    v = route(h, attn.v_proj, attn.vision_v_proj)
    kb = route(h, attn.vision_k_bridge_on_language, attn.vision_k_bridge_on_vision)
    vb = route(h, attn.vision_v_bridge_on_language, attn.vision_v_bridge_on_vision)
    text_key = (~vision)[..., None].float()
    k_for_vision, v_for_vision = k + kb * text_key, v + vb * text_key  # bridge on text keys
    k_for_text, v_for_text = k + kb * (1 - text_key), v + vb * (1 - text_key)  # bridge on image keys
    q = heads(q)
    scores = []
    for keys in (k_for_vision, k_for_text):
        scores.append(_rope(q, pos) @ _rope(heads(keys), pos).transpose(-1, -2) / (C // H) ** 0.5)
    query_is_vision = vision[:, None, :, None]
    s = torch.where(query_is_vision, scores[0], scores[1])
    allowed = torch.ones(N, N).tril().bool()[None, None] & attention_mask[:, None, None, :].bool()
    s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
    a = s.float().softmax(-1)
    o = torch.where(query_is_vision, a @ heads(v_for_vision), a @ heads(v_for_text))
    o = o.transpose(1, 2).reshape(B, N, C)
    return route(o, attn.o_proj, attn.vision_o_proj)


SPANS = {
    # image columns reach both ends: the image pass covers every query column
    "wide": [[(3, 9), (15, 20), (30, 36)], [(0, 6), (20, 33)], [(5, 7), (10, 12), (14, 16), (25, 40)]],
    # images only inside columns [5, 29): the image pass runs on that slice with an offset causal mask
    "narrow": [[(5, 9), (12, 20)], [(6, 10)], [(8, 12), (20, 29)]],
    # images only in columns [18, 26), late: the image pass runs on that slice under an explicit mask;
    # before (narrow), the plain causal pass over [0, hi) with the first lo outputs dropped is cheaper
    "late": [[(18, 22)], [(19, 26)], [(18, 24)]],
    # one image in the same columns of every row (a LAION batch): the text pass runs on the text
    # columns only, before and after the image, or only after it
    "aligned": [[(2, 26)]] * B,
    "aligned_at_start": [[(0, 24)]] * B,
    # the same, but with 23 text columns after a short image the masked tail would cost more blocks
    # than the whole causal pass: not split
    "aligned_short": [[(5, 17)]] * B,
}
SPLIT = {"aligned", "aligned_at_start"}  # layouts whose text pass runs on the text columns only


def _batch(left_padding: bool, spans, seed: int = 0):
    """Random modality layout with several image spans per row and padding on one side."""
    g = torch.Generator().manual_seed(seed)
    vision = torch.zeros(B, N, dtype=torch.bool)
    for b, row in enumerate(spans):
        for s, e in row:
            vision[b, s:e] = True
    lengths = torch.tensor([N, N - 7, N - 13])
    idx = torch.arange(N)
    if left_padding:
        mask = (idx[None] >= (N - lengths)[:, None]).long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
    else:
        mask = (idx[None] < lengths[:, None]).long()
        pos = idx.expand(B, N)
    return torch.randn(B, N, C, generator=g), vision, mask, pos


@pytest.mark.parametrize("layout", sorted(SPANS))
@pytest.mark.parametrize("left_padding", [False, True])
def test_fused_attention_matches_naive(left_padding, layout):
    torch.manual_seed(0)
    cfg = LibraConfig(hidden_size=C, num_attention_heads=H, intermediate_size=64, vocab_size=64)
    attn = LibraAttention(cfg, layer_idx=0)
    for p in attn.parameters():  # every path non-zero, bridges included
        torch.nn.init.normal_(p, std=0.2)
    h, vision, mask, pos = _batch(left_padding, SPANS[layout])
    routing = Routing.from_vision_mask(vision)
    columns = vision.any(0).nonzero()
    span = (int(columns.min()), int(columns.max()) + 1)
    assert (span == (0, N)) == (layout == "wide")
    layout_name, layout = layout, AttentionLayout.build(mask, routing, 0, left_padding, True, span)
    # only without a mask (right padding): a left-padded row's image columns are its own
    assert (layout.text_tail_mask is not None) == (layout_name in SPLIT and not left_padding)
    from_zero = not left_padding and 2 * span[0] < span[1]
    assert layout.vision_first_query == (0 if from_zero else span[0])
    with torch.no_grad():
        fused = routing.to_sequence(
            attn(routing.to_sorted(h), routing, rope_cos_sin(pos, C // H, h.dtype), layout, None), B
        )
        naive = naive_bridge_attention(attn, h, vision, mask, pos)
    real = mask.bool()
    assert (fused[real] - naive[real]).abs().max().item() < 1e-5
    # the bridge really matters in this test: without it the outputs differ clearly
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if "bridge" in name:
                p.zero_()
        no_bridge = naive_bridge_attention(attn, h, vision, mask, pos)
    assert (no_bridge[real] - naive[real]).abs().max() > 1e-2


@pytest.mark.parametrize("layout", sorted(SPANS))
def test_fused_attention_gradients_match_naive(layout):
    """Training runs the image queries' key/value set only before the last image's end ("narrow": 29 of
    40 positions) and, with the image in the same columns of every row, the text pass on the text
    columns only; the gradients of the input and of every weight must still be the naive ones."""
    torch.manual_seed(0)
    cfg = LibraConfig(hidden_size=C, num_attention_heads=H, intermediate_size=64, vocab_size=64)
    attn = LibraAttention(cfg, layer_idx=0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    h, vision, mask, pos = _batch(False, SPANS[layout], seed=1)
    routing = Routing.from_vision_mask(vision)
    columns = vision.any(0).nonzero()
    span = (int(columns.min()), int(columns.max()) + 1)
    built = AttentionLayout.build(mask, routing, 0, False, True, span)
    assert built.image_prefix is not None and built.image_prefix[1].numel() == B * span[1]
    assert (built.text_tail_mask is not None) == (layout in SPLIT)
    weight = torch.randn(B, N, C, generator=torch.Generator().manual_seed(2)) * mask[..., None]

    def gradients(run):
        attn.zero_grad()
        x = h.clone().requires_grad_()
        (run(x) * weight).sum().backward()
        # a weight no output depends on has no gradient (e.g. the text bridges with no text key before
        # the image's end): zero, as in the naive version
        return [x.grad] + [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in attn.parameters()
        ]

    rope = rope_cos_sin(pos, C // H, h.dtype)
    fused = gradients(
        lambda x: routing.to_sequence(attn(routing.to_sorted(x), routing, rope, built, None), B)
    )
    naive = gradients(lambda x: naive_bridge_attention(attn, x, vision, mask, pos))
    names = ["input"] + [name for name, _ in attn.named_parameters()]
    for name, a, b in zip(names, fused, naive):
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item()), name
