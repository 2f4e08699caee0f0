"""Seeded tiny processors for tests and the tiny experiment: no downloads, seconds on a CPU.

``build_tiny_vision_tokenizer`` makes a random CLIP + LFQ + decoder of the official architecture at
toy size (default: 56-px images, patch 14 → 4×4 grid, 2 codebooks of 16 codes), weights drawn like
the vision_tokenizer_tiny fixture's (std 1/sqrt(fan_in) so activations stay O(1) and codes vary).
``build_tiny_processor`` adds a SentencePiece model trained on the given texts and writes the whole
folder with ``save_pretrained`` so ``LibraProcessor.from_pretrained`` can load it back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import CLIPVisionConfig

from .processor import LibraProcessor
from .text_tokenizer import load_text_tokenizer, train_sentencepiece
from .vision_tokenizer import VisionTokenizer, VisionTokenizerConfig


def build_tiny_vision_tokenizer(
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 14,
    clip_width: int = 32,
    clip_layers: int = 4,
    select_layer: tuple[int, ...] = (1, 2, 3, 4),
    codebook_size: int = 16,
    num_codebook: int = 2,
    embed_dim: int = 48,
) -> VisionTokenizer:
    """A seeded random vision tokenizer (fp32, frozen) of the official architecture, tiny."""
    grid = image_size // patch_size
    clip_config = CLIPVisionConfig(
        hidden_size=clip_width,
        intermediate_size=2 * clip_width,
        num_hidden_layers=clip_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        projection_dim=16,
    )
    config = VisionTokenizerConfig(
        encoder_name=f"clip-vit-tiny-patch{patch_size}-{image_size}",
        select_layer=list(select_layer),
        embed_dim=embed_dim,
        codebook_size=codebook_size,
        num_codebook=num_codebook,
        max_vision_token_length=grid * grid + 2,
        z_channels=32,
        resolution=image_size,
        ch=32,
        ch_mult=[2, 1, 1, 1] if grid * 8 < image_size else [1, 1],
        num_res_blocks=0,
        attn_resolutions=[grid],
        initial_resolution=grid,
        num_attn_head=2,
    )
    model = VisionTokenizer(config, clip_config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "embedding" not in name:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif "embedding" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            else:  # norm scales
                param.copy_(1 + torch.randn(param.shape, generator=generator) * 0.1)
    model.freeze()
    return model


def build_tiny_processor(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 800, seed: int = 0, **vision_kwargs
) -> LibraProcessor:
    """Train a tiny text tokenizer on ``texts``, build a seeded vision tokenizer, save both to
    ``out_dir`` (the checkpoint folder layout) and return the processor loaded back from it."""
    out_dir = Path(out_dir)
    train_sentencepiece(texts, out_dir, vocab_size=vocab_size)
    vision = build_tiny_vision_tokenizer(seed=seed, **vision_kwargs)
    LibraProcessor(load_text_tokenizer(out_dir), vision).save_pretrained(out_dir)
    return LibraProcessor.from_pretrained(out_dir)
