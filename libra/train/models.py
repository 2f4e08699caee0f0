"""How the recipe builds the model and the processor from `conf/model` and `conf/tokenizer`.

Every `conf/model/*.yaml` is a partial of one function below that takes the *processor* first: the
model's vocabulary and vision shapes must be the processor's (text vocabulary size, codebooks and
their size, code grid, CLIP feature width), so they are read from it instead of being typed twice.
`check_model_matches_processor` is the loud error at that seam for folders loaded from disk.
"""

from __future__ import annotations

from pathlib import Path

import torch

from libra.model import LibraConfig, LibraForCausalLM
from libra.pretrained import load_pretrained_model, load_pretrained_processor, resolve_pretrained
from libra.tokenizer.image_processing import ImagePreprocessor
from libra.tokenizer.processor import LibraProcessor
from libra.tokenizer.text_tokenizer import load_text_tokenizer
from libra.tokenizer.vision_tokenizer import VisionTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def vision_shape(processor: LibraProcessor) -> dict[str, int]:
    """The `LibraConfig` fields that the processor dictates."""
    vocab = processor.vocab
    return {
        "vocab_size": vocab.text_vocab_size,
        "vision_vocab_size": vocab.codebook_size + 2,  # codes + boi + eoi
        "vision_codebook_num": vocab.num_codebook,
        "image_feature_resolution": vocab.grid,
        "max_vision_token_length": vocab.tokens_per_image,
        "contiguous_signal_size": processor.vision_tokenizer.feature_size,
    }


def check_model_matches_processor(config: LibraConfig, processor: LibraProcessor) -> None:
    """Refuse a model whose ids or feature width disagree with the processor's."""
    wrong = {
        key: (getattr(config, key), value)
        for key, value in vision_shape(processor).items()
        if getattr(config, key) != value
    }
    if wrong:
        detail = ", ".join(f"{k}: model {m} vs processor {p}" for k, (m, p) in wrong.items())
        raise ValueError(
            f"model and tokenizer disagree ({detail}); build both from the same checkpoint folder"
        )


def tiny_libra(
    processor: LibraProcessor,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    max_position_embeddings: int = 512,
    vision_down_ratio: int = 4,
    bridge_rank: int = 8,
    initializer_range: float = 0.02,
) -> LibraForCausalLM:
    """A randomly initialised Libra of the given size, shaped for `processor`."""
    config = LibraConfig(
        initializer_range=initializer_range,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        vision_down_ratio=vision_down_ratio,
        bridge_rank=bridge_rank,
        **vision_shape(processor),
    )
    return LibraForCausalLM(config)


def libra_from_llama(processor: LibraProcessor, folder: str, **config_overrides) -> LibraForCausalLM:
    """Stage-1 start: LLaMA-2 weights in the language half, a fresh visual expert (docs/design.md §7.1)."""
    shape = vision_shape(processor)
    model = LibraForCausalLM.from_llama(folder, **{**shape, **config_overrides})
    check_model_matches_processor(model.config, processor)
    return model


def libra_from_pretrained(
    processor: LibraProcessor, init_from: str, dtype: str = "float32"
) -> LibraForCausalLM:
    """Any Libra checkpoint (`libra.pretrained`): the official release, an export, a run dir or a
    DeepSpeed step folder; this is how stage 2 starts from stage 1."""
    resolved = resolve_pretrained(init_from)
    print(f"[libra] model.init_from: {resolved.reason}", flush=True)
    model = load_pretrained_model(resolved, dtype=DTYPES[dtype])
    check_model_matches_processor(model.config, processor)
    return model


def processor_from_pretrained(
    init_from: str, template: str = "v1", max_length: int | None = None
) -> LibraProcessor:
    """The processor stored with any Libra checkpoint (the folder `model.init_from` names)."""
    return load_pretrained_processor(init_from, template=template, max_length=max_length)


def processor_from_parts(
    text_folder: str, vision_folder: str, template: str = "v1", max_length: int | None = None
) -> LibraProcessor:
    """Stage-1 start: LLaMA-2's tokenizer + the released vision tokenizer folder (yaml, vqgan.ckpt, CLIP)."""
    vision = VisionTokenizer.from_pretrained(vision_folder)
    clip_dir = Path(vision_folder) / vision.config.encoder_name
    preprocessor = ImagePreprocessor.from_clip_folder(clip_dir)
    return LibraProcessor(
        load_text_tokenizer(text_folder), vision, preprocessor, template=template, max_length=max_length
    )
