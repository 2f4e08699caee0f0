"""Build a stage-1 Libra from a LLaMA-2 Hugging Face folder (paper §4: the LLM starts from LLaMA-2-chat).

    model = LibraForCausalLM.from_llama(folder, dtype=None, **config_overrides)

`folder` holds a LLaMA `config.json` and its safetensors weights. The language half of Libra has exactly
LLaMA's parameter names and shapes, so those weights load 1:1. Every vision weight is new and initialised
as the official code does when it loads LLaMA weights (docs/design.md §2.1): factor A and the vision expert's
factor B ~ N(0, initializer_range), the bridges' weight_B = 0 (so the bridges start switched off), norms
1, embeddings/heads/signal projection ~ N(0, initializer_range). The LLaMA dimensions (vocab, hidden,
layers, heads, eps, positions, special ids) are taken from its config.json; `config_overrides` set any
other `LibraConfig` field (e.g. `contiguous_signal_size`, `vision_vocab_size`) or override those.

Copying the eos embedding row into the pad row, as the official training wrapper does, is left to the
training recipe.
"""

import json
from pathlib import Path

import torch

from .config import LibraConfig

# LLaMA config.json keys that carry over to LibraConfig unchanged
LLAMA_KEYS = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
]


def libra_config_from_llama(folder: str | Path, **config_overrides) -> LibraConfig:
    """The LibraConfig for a LLaMA folder: its dimensions plus `config_overrides`."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"from_llama: {path} not found; pass a LLaMA-2 Hugging Face folder.")
    llama = json.loads(path.read_text())
    if llama.get("model_type") != "llama":
        raise ValueError(f"from_llama: {path} has model_type {llama.get('model_type')!r}, expected 'llama'.")
    heads = llama["num_attention_heads"]
    if llama.get("num_key_value_heads", heads) != heads:
        raise ValueError(
            "from_llama: Libra uses full multi-head attention; num_key_value_heads must equal heads."
        )
    rope = llama.get("rope_parameters") or {}
    theta = rope.get("rope_theta", llama.get("rope_theta", 10000.0))
    if theta != 10000.0 or rope.get("rope_type", "default") != "default" or llama.get("rope_scaling"):
        raise ValueError(
            "from_llama: Libra's RoPE is the plain one with base 10000; this LLaMA uses another."
        )
    if llama.get("attention_bias") or llama.get("mlp_bias"):
        raise ValueError("from_llama: Libra's projections have no bias; this LLaMA has attention/mlp biases.")
    base = {key: llama[key] for key in LLAMA_KEYS if llama.get(key) is not None}
    return LibraConfig(**{**base, **config_overrides})


def load_llama_as_libra(cls, folder: str | Path, dtype: torch.dtype | None = None, **config_overrides):
    """Load `cls` (LibraForCausalLM) with LLaMA weights in the language half and fresh vision weights."""
    from libra.pretrained import check_loaded_weights

    config = libra_config_from_llama(folder, **config_overrides)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    # mismatched shapes come back in `info`, to be named with the folder (not transformers' bare error)
    model, info = cls.from_pretrained(
        folder, config=config, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    # the vision half starts fresh on purpose; a language weight the files lack would start at random
    # too and give a model that runs and answers nonsense (a damaged shard, a tied lm_head)
    language_missing = [key for key in info["missing_keys"] if "vision" not in key]
    check_loaded_weights(Path(folder), config, {**info, "missing_keys": language_missing})
    return model
