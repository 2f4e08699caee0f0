"""Baseline for perf/: Libra's forward + loss computed the way the official code does it.

The algorithm and its costs: docs/design.md §3, P1, P2, P3, P4.

It runs on the parameters of a `LibraForCausalLM` ('1d' mode), so the baseline and our model compute
the same function, but with the reference's algorithm: boolean-mask routing around every module
(`x[mask]` gathers/scatters, a device-to-host sync each), both bridge score matrices materialised in
the model dtype, an additive (B, 1, N, N) mask, a fp32 softmax over a materialised N x N tensor, two
full A @ V products merged by query modality, and the loss over the concatenated (K, B, N, V + VV)
logits. Only used as a speed/memory baseline; correctness is what the tests pin for our model.
"""

from functools import partial

import torch
import torch.nn.functional as F


def _route(x, flag, text_fn, vision_fn, out_dim=None):
    out = x.new_empty(*x.shape[:-1], out_dim or x.shape[-1])
    out[~flag] = text_fn(x[~flag])
    out[flag] = vision_fn(x[flag])
    return out


def _text_mlp(mlp, t):
    return mlp.down_proj(F.silu(mlp.gate_proj(t)) * mlp.up_proj(t))


def _vision_mlp(mlp, t):
    return mlp.vision_down_proj(F.silu(mlp.vision_gate_proj(t)) * mlp.vision_up_proj(t))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _attention(attn, h, flag, mask, cos, sin):
    B, N, C = h.shape
    H, D = attn.n_head, attn.head_dim
    q = _route(h, flag, attn.q_proj, attn.vision_q_proj)
    k = _route(h, flag, attn.k_proj, attn.vision_k_proj)
    v = _route(h, flag, attn.v_proj, attn.vision_v_proj)
    kb = _route(h, flag, attn.vision_k_bridge_on_language, attn.vision_k_bridge_on_vision)
    vb = _route(h, flag, attn.vision_v_bridge_on_language, attn.vision_v_bridge_on_vision)
    k_vision, k_text = k.clone(), k.clone()
    k_vision[~flag] = k_vision[~flag] + kb[~flag]  # image queries see bridged text keys
    k_text[flag] = k_text[flag] + kb[flag]  # text queries see bridged image keys

    def heads(x):
        return x.view(B, N, H, D).transpose(1, 2)  # (B, H, N, D)

    q = heads(q) * cos + _rotate_half(heads(q)) * sin
    scores = []
    for keys in (k_vision, k_text):
        keys = heads(keys) * cos + _rotate_half(heads(keys)) * sin
        scores.append(q @ keys.transpose(-1, -2) / D**0.5)  # (B, H, N, N) in the model dtype
    merged = scores[1].permute(0, 2, 1, 3).clone()  # (B, N, H, N): rows by query
    merged[flag] = scores[0].permute(0, 2, 1, 3)[flag]
    s = merged.permute(0, 2, 1, 3) + mask
    s = torch.max(s, torch.tensor(torch.finfo(s.dtype).min, device=s.device))
    a = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    v_vision, v_text = v.clone(), v.clone()
    v_vision[~flag] = v_vision[~flag] + vb[~flag]
    v_text[flag] = v_text[flag] + vb[flag]
    out_vision = (a @ heads(v_vision)).transpose(1, 2)  # (B, N, H, D)
    out = (a @ heads(v_text)).transpose(1, 2).clone()
    out[flag] = out_vision[flag]
    return _route(out.reshape(B, N, C), flag, attn.o_proj, attn.vision_o_proj)


def naive_loss(model, input_ids, attention_mask, vision_indices, contiguous_signal, labels):
    """The official forward + loss of a '1d' LibraForCausalLM; returns the scalar loss."""
    cfg, m = model.config, model.model
    V, K = cfg.vocab_size, cfg.vision_codebook_num
    _, B, N = input_ids.shape
    flag = vision_indices < cfg.max_vision_token_length
    ids = input_ids.clone()
    ids[:, flag] -= V
    dtype = m.embed_tokens.weight.dtype
    x = torch.empty(B, N, cfg.hidden_size, dtype=dtype, device=ids.device)
    x[~flag] = m.embed_tokens(ids[0][~flag])
    discrete = torch.cat([m.vision_embed_tokens[k](ids[k][flag]) for k in range(K)], dim=-1)
    joint = torch.cat([discrete, contiguous_signal[flag].to(dtype)], dim=-1)
    x[flag] = m.vision_contiguous_signal_processor(m.vision_signal_norm(joint))

    minimum = torch.finfo(dtype).min
    causal = torch.full((N, N), minimum, dtype=dtype, device=x.device).triu(1)
    padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * minimum
    mask = causal[None, None] + padding  # (B, 1, N, N), materialised as in the reference
    inv_freq = 1.0 / (10000 ** (torch.arange(0, cfg.head_dim, 2, device=x.device).float() / cfg.head_dim))
    freqs = torch.arange(N, device=x.device).float()[:, None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)

    for layer in m.layers:
        h = _route(x, flag, layer.input_layernorm, layer.vision_input_layernorm)
        x = x + _attention(layer.self_attn, h, flag, mask, cos, sin)
        h = _route(x, flag, layer.post_attention_layernorm, layer.vision_post_attention_layernorm)
        x = x + _route(h, flag, partial(_text_mlp, layer.mlp), partial(_vision_mlp, layer.mlp))
    x = _route(x, flag, m.norm, m.vision_norm)

    width = V + cfg.vision_vocab_size
    text = model.lm_head(x[~flag])  # the same text logits go into every codebook's joint tensor
    losses = []
    for k in range(K):
        logits = x.new_empty(B, N, width)
        logits[~flag] = torch.cat([text, text.new_full((text.shape[0], width - V), float("-inf"))], -1)
        vision = model.vision_lm_head.heads[k](x[flag])
        logits[flag] = torch.cat([vision.new_full((vision.shape[0], V), float("-inf")), vision], -1)
        losses.append(F.cross_entropy(logits[:, :-1].reshape(-1, width), labels[k, :, 1:].reshape(-1)))
    return torch.stack(losses).mean()
