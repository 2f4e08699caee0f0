"""Libra's tokenisation: image preprocessing, the CLIP + LFQ vision tokenizer, the Llama text tokenizer,
conversation templates and ``LibraProcessor`` (samples ↔ model inputs, processor.py). Imports nothing
else of libra."""
