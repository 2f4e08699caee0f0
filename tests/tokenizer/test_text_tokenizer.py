"""Text tokenizer: fixture ids on both load paths, the quirks of docs/design.md §5.1, training."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from libra.tokenizer.text_tokenizer import load_text_tokenizer, train_sentencepiece

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
VT_DIR = DATA_DIR / "vision_tokenizer_tiny"
PROC_DIR = DATA_DIR / "processor_tiny"
MODEL_DIR = VT_DIR / "model"  # the tiny official-layout checkpoint folder


@pytest.fixture(scope="module", params=["tokenizer.json", "tokenizer.model only"])
def text_tokenizer(request, tmp_path_factory):
    if request.param == "tokenizer.json":
        return load_text_tokenizer(MODEL_DIR)
    folder = tmp_path_factory.mktemp("spm_only")
    shutil.copy(MODEL_DIR / "tokenizer.model", folder / "tokenizer.model")
    return load_text_tokenizer(folder)


def test_ids_and_specials(text_tokenizer):
    t = text_tokenizer
    assert t.libra_base_vocab_size == 800
    assert t.convert_tokens_to_ids(["<img_ph>", "<img_gen>"]) == [800, 801]
    assert (t.pad_token_id, t.bos_token_id, t.eos_token_id, t.unk_token_id) == (0, 1, 2, 0)


def test_fixture_text_ids(text_tokenizer, proc_expected):
    cases = json.loads((PROC_DIR / "cases.json").read_text())["cases"]
    for name in ["laion_i2t", "instruction", "instruction_text_only", "text_only_raw"]:
        got = text_tokenizer(cases[name]["texts"], padding="longest", return_tensors="pt").input_ids
        assert torch.equal(got, proc_expected[f"{name}.text_input_ids"]), name


def test_placeholder_and_eos_quirks(text_tokenizer):
    pieces = lambda s: text_tokenizer.convert_ids_to_tokens(text_tokenizer(s).input_ids)
    # a placeholder swallows the one space before it; two placeholders -> exactly two tokens
    assert pieces("USER: <img_ph> <img_ph>\nWhy")[1:6] == ["▁USER", ":", "▁<img_ph>", "▁<img_ph>", "<0x0A>"]
    # at the very start the normaliser's prepended "▁" lets it match too
    assert pieces("<img_ph> cat")[1] == "▁<img_ph>"
    # right after a newline it is not recognised: ordinary pieces instead
    assert 800 not in text_tokenizer("cat\n<img_ph>").input_ids
    # " </s>" is "▁" + </s>; text after </s> starts a fresh "▁" word
    after = pieces("ok </s>USER")
    assert after[after.index("</s>") - 1] == "▁" and after[after.index("</s>") + 1].startswith("▁")
    # no eos is added; bos is
    ids = text_tokenizer("a cat").input_ids
    assert ids[0] == 1 and ids[-1] != 2


def test_train_sentencepiece_layout_and_reload(tmp_path):
    captions = json.loads((DATA_DIR / "benchmark_corpus/captioning/coco_karpathy_test.json").read_text())
    texts = [c for entry in captions for c in entry["caption"]]
    trained = train_sentencepiece(texts, tmp_path, vocab_size=600)
    for name in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        assert (tmp_path / name).is_file(), name
    assert trained.libra_base_vocab_size == 600
    assert trained.convert_tokens_to_ids(["<img_ph>", "<img_gen>"]) == [600, 601]
    assert trained("a\n").input_ids[-1] == 13  # byte fallback: "\n" is <0x0A> as in Llama
    # the tokenizer.model-only path builds the same pipeline as tokenizer.json
    only_model = tmp_path / "only_model"
    only_model.mkdir()
    shutil.copy(tmp_path / "tokenizer.model", only_model / "tokenizer.model")
    rebuilt = load_text_tokenizer(only_model)
    sample = texts[:50] + ["USER: <img_ph> <img_ph>\nWhat? ASSISTANT: ok </s>USER: ünïcode 🦆 42"]
    assert rebuilt(sample).input_ids == trained(sample).input_ids
    with pytest.raises(ValueError, match="vocab_size"):
        train_sentencepiece(texts, tmp_path / "x", vocab_size=100)
