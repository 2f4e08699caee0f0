"""FLOPs Libra does per token, counted on the path each token takes (for MFU in perf/ and the trainer).

A routed model does not run every weight on every token, so "6 x parameters per token" over-counts it:

* a text token runs the LLaMA weights (dense q/k/v/o and SwiGLU) and the text head;
* an image token runs the low-rank visual expert (each LibraLinear costs rank x (in + out) multiply-adds
  instead of in x out), the signal processor of its input embedding and the K vision heads;
* the bridge adds rank-`bridge_rank` key and value projections: on every image token (its bridged keys
  and values are what text queries read), and on text tokens only when the forward has image queries
  (only image queries read bridged text keys);
* attention costs QK^T and AV over the hidden width for every (query, key) pair a query attends, with
  the one key/value set of its own modality (the causal pairs: n (n + 1) / 2 in a row of n tokens).

These are model FLOPs (the math of the network), not the hardware's: the fused attention's second pass
and masked-out work are not counted, as in the usual MFU definition. Norms, embeddings lookups and
element-wise work are left out. A training step costs 3 x the forward (backward: 2 x).
"""

from dataclasses import dataclass

import torch

from .config import LibraConfig


def _low_rank(in_features: int, out_features: int, rank: int) -> int:
    """Multiply-adds per token of a factorised linear B(A x)."""
    return rank * (in_features + out_features)


@dataclass(frozen=True)
class PathFlops:
    """Forward FLOPs of one token on each path, summed over all layers (heads included)."""

    text: float  # dense LLaMA weights + lm_head
    image: float  # low-rank visual expert + its bridges + signal processor + vision heads
    text_bridge: float  # a text token's key/value bridges, run only when the forward has image queries
    attention_pair: float  # one (query, key) pair: QK^T and AV over every head


def path_flops(config: LibraConfig) -> PathFlops:
    C, inner, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    ratio, r_b = config.vision_down_ratio, config.bridge_rank
    text_layer = 4 * C * C + 3 * C * inner
    image_layer = 4 * _low_rank(C, C, C // ratio)  # vision q/k/v/o
    image_layer += 2 * _low_rank(C, inner, inner // ratio) + _low_rank(inner, C, C // ratio)  # SwiGLU
    bridge = 2 * _low_rank(C, C, r_b) if config.use_bridge else 0  # key and value bridge
    head_width = C * (2 if config.vision_prediction_mode == "2d" else 1)
    signal = config.contiguous_signal_size + (C if config.concat_signals else 0)
    image_heads = config.vision_codebook_num * head_width * config.vision_vocab_size + signal * C
    return PathFlops(
        text=2.0 * (L * text_layer + C * config.vocab_size),
        image=2.0 * (L * (image_layer + bridge) + image_heads),
        text_bridge=2.0 * L * bridge,
        attention_pair=2.0 * L * 2 * C,
    )


def forward_flops(config: LibraConfig, n_text: int, n_image: int, attended_pairs: int) -> float:
    """Forward FLOPs of a batch of `n_text` text and `n_image` image tokens whose queries attend
    `attended_pairs` (query, key) pairs in all (see `causal_pairs`)."""
    p = path_flops(config)
    flops = n_text * p.text + n_image * p.image + attended_pairs * p.attention_pair
    if n_image > 0:
        flops += n_text * p.text_bridge
    return flops


def training_flops(config: LibraConfig, n_text: int, n_image: int, attended_pairs: int) -> float:
    """Forward + backward FLOPs of a training step on such a batch."""
    return 3.0 * forward_flops(config, n_text, n_image, attended_pairs)


def causal_pairs(lengths) -> int:
    """(query, key) pairs of causal attention over rows of these lengths (no cache)."""
    return sum(n * (n + 1) // 2 for n in lengths)


def training_flops_per_token(
    config: LibraConfig, vision_indices: torch.Tensor, attention_mask: torch.Tensor
) -> float:
    """Training FLOPs per real token of one batch ((B, N) model inputs); reads the device once."""
    real = attention_mask.bool()
    n_image = (real & (vision_indices < config.max_vision_token_length)).sum()
    counts = torch.cat([n_image[None], real.sum(1)]).tolist()
    n_image, lengths = counts[0], counts[1:]
    tokens = sum(lengths)
    flops = training_flops(config, tokens - n_image, n_image, causal_pairs(lengths))
    return flops / max(tokens, 1)
