"""Libra's text tokenizer (docs/design.md §5.1): the Llama-2 SentencePiece BPE through HF ``tokenizers``.

The fast tokenizer is built from ``tokenizer.json`` with the ``tokenizers`` library itself, because
transformers 5 rebuilds Llama tokenizers with a Metaspace pre-tokenizer and that changes how added
tokens match. Llama-2's file has the legacy normaliser (prepend "▁", spaces → "▁"), and the image
placeholders are *normalised* added tokens, so they match "▁<img_ph>": a placeholder swallows the
space before it, and one written right after a newline is not recognised. A folder with
only ``tokenizer.model`` is converted to the same pipeline here. The result is wrapped in a
transformers ``PreTrainedTokenizerFast`` (pad = unk, bos added, eos as configured).

``train_sentencepiece`` trains a tiny Llama-style model for tests and the tiny experiment and saves
it in the same layout as the official checkpoint folder.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

IMAGE_PLACEHOLDER = "<img_ph>"  # one per image position; overwritten with image ids
IMAGE_GENERATION = "<img_gen>"  # "generate an image here": becomes boi
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def backend_from_sentencepiece(model_file: str | Path) -> Tokenizer:
    """A ``tokenizers`` BPE pipeline equal to Llama-2's ``tokenizer.json`` for a SentencePiece model."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    if sp.id_to_piece(0) != UNK or sp.id_to_piece(1) != BOS or sp.id_to_piece(2) != EOS:
        raise ValueError(f"{model_file}: ids 0/1/2 must be {UNK}/{BOS}/{EOS} as in Llama")
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    # BPE merges are implied by the pieces: every piece that splits into two pieces is a merge,
    # ranked by the id of the result (SentencePiece ids follow merge order), then by the parts.
    merges = []
    for piece, rank in vocab.items():
        if sp.is_control(rank) or sp.is_byte(rank) or sp.is_unknown(rank):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((rank, vocab[left], vocab[right], left, right))
    merges.sort()
    model = BPE(vocab, [(a, b) for *_, a, b in merges], unk_token=UNK, fuse_unk=True, byte_fallback=True)
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (UNK, BOS, EOS)])
    return backend


def _set_post_processor(backend: Tokenizer, add_bos: bool, add_eos: bool) -> None:
    single = ([f"{BOS}:0"] if add_bos else []) + ["$A:0"] + ([f"{EOS}:0"] if add_eos else [])
    pair = single + ([f"{BOS}:1"] if add_bos else []) + ["$B:1"] + ([f"{EOS}:1"] if add_eos else [])
    special = [(t, backend.token_to_id(t)) for t, used in ((BOS, add_bos), (EOS, add_eos)) if used]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def load_text_tokenizer(
    folder: str | Path, add_eos_token: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerFast:
    """Load the Libra text tokenizer from ``tokenizer.json`` or, failing that, ``tokenizer.model``.

    ``<img_ph>`` and ``<img_gen>`` are added (ids vocab_size and vocab_size + 1), pad = unk.
    """
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "tokenizer.model").is_file():
        backend = backend_from_sentencepiece(folder / "tokenizer.model")
    else:
        raise FileNotFoundError(f"{folder} has neither tokenizer.json nor tokenizer.model")
    base_vocab = backend.get_vocab_size(with_added_tokens=False)
    _set_post_processor(backend, add_bos=True, add_eos=add_eos_token)
    # normalized=True, special=False: exactly how the official tokenizer adds them (docs/design.md §5.1).
    backend.add_tokens(
        [AddedToken(t, normalized=True, special=False) for t in (IMAGE_PLACEHOLDER, IMAGE_GENERATION)]
    )
    placeholder = backend.token_to_id(IMAGE_PLACEHOLDER)
    if placeholder != base_vocab or backend.token_to_id(IMAGE_GENERATION) != base_vocab + 1:
        raise ValueError(
            f"{folder}: {IMAGE_PLACEHOLDER}/{IMAGE_GENERATION} must get ids {base_vocab}/{base_vocab + 1}"
            f" (right after the base vocabulary); the tokenizer already has other added tokens"
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=UNK,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.libra_base_vocab_size = base_vocab
    tokenizer.libra_add_eos_token = add_eos_token
    source = folder / "tokenizer.model"
    tokenizer.libra_sentencepiece_model = source.read_bytes() if source.is_file() else None
    return tokenizer


def save_text_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    """Write the Llama-2 file layout: tokenizer.json (+ tokenizer.model when known) and configs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    if getattr(tokenizer, "libra_sentencepiece_model", None):
        (folder / "tokenizer.model").write_bytes(tokenizer.libra_sentencepiece_model)
    token = lambda t: {
        "content": t,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": bool(getattr(tokenizer, "libra_add_eos_token", False)),
        "bos_token": token(BOS),
        "eos_token": token(EOS),
        "unk_token": token(UNK),
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "padding_side": tokenizer.padding_side,
        "tokenizer_class": "LlamaTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": token(BOS), "eos_token": token(EOS), "unk_token": token(UNK)}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def train_sentencepiece(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 800
) -> PreTrainedTokenizerFast:
    """Train a Llama-style SentencePiece BPE on ``texts``, save the folder layout, return the tokenizer.

    Llama settings: byte fallback (ids 3..258 are the 256 bytes, so "\\n" = 13), digits split,
    dummy prefix, identity normalisation, whitespace kept; ids 0/1/2 = unk/bos/eos, no pad piece.
    """
    texts = [t for t in texts if t.strip()]
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size}: needs room for 3 specials + 256 bytes + merges (>= 300)")
    if not texts:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    backend = backend_from_sentencepiece(out_dir / "tokenizer.model")
    _set_post_processor(backend, add_bos=True, add_eos=False)
    backend.save(str(out_dir / "tokenizer.json"))
    tokenizer = load_text_tokenizer(out_dir)
    save_text_tokenizer(tokenizer, out_dir)
    return tokenizer
