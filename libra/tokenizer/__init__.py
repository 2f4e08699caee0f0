"""Libra's tokenisation: image preprocessing, the CLIP + LFQ vision tokenizer, the Llama text tokenizer,
conversation templates and ``LibraProcessor`` (samples ↔ model inputs). Imports nothing else of libra.

Heavy modules (torch, transformers) load on first use of a name below, so ``import libra`` stays light.
"""

from importlib import import_module

_EXPORTS = {
    "LibraProcessor": "processor",
    "DecodedSample": "processor",
    "LibraCollator": "collator",
    "TextBatch": "collator",
    "SampleError": "collator",
    "ImagePreprocessor": "image_processing",
    "ImageError": "image_processing",
    "ImageVocab": "image_vocab",
    "VisionTokenizer": "vision_tokenizer",
    "VisionTokenizerConfig": "vision_tokenizer",
    "VisionTokens": "vision_tokenizer",
    "TokenCache": "token_cache",
    "load_text_tokenizer": "text_tokenizer",
    "train_sentencepiece": "text_tokenizer",
    "CaptionCleaner": "captions",
    "build_tiny_processor": "tiny",
    "build_tiny_vision_tokenizer": "tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
