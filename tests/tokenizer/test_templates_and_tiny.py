"""Conversation templates (v1 / llama_2 / plain), caption cleaning, and the seeded tiny processor."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

from libra.tokenizer.captions import CaptionCleaner, remove_tags
from libra.tokenizer.processor import LibraProcessor
from libra.tokenizer.samples import CaptionSample, ConversationSample, Turn
from libra.tokenizer.templates import get_template
from libra.tokenizer.tiny import build_tiny_processor, build_tiny_vision_tokenizer

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


TURNS = [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]


def _targets(text, masked):
    """The characters that remain trainable."""
    keep = [True] * len(text)
    for start, end in masked:
        keep[start:end] = [False] * (end - start)
    return "".join(c for c, k in zip(text, keep) if k)


def test_v1_template_text_and_targets():
    text, masked = get_template("v1").render(TURNS)
    assert text.endswith("questions. USER: q1 ASSISTANT: a1 </s>USER: q2 ASSISTANT: a2 </s>")
    assert _targets(text, masked) == "a1 </s>a2 </s>"
    prompt, masked = get_template("v1").render([("user", "q1"), ("assistant", "")])
    assert prompt.endswith("USER: q1 ASSISTANT:") and _targets(prompt, masked) == ""


def test_llama_2_and_plain_templates():
    text, masked = get_template("llama_2").render(TURNS)
    assert text.startswith("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.")
    assert text.endswith("<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST] a2 </s>")
    assert _targets(text, masked) == "a1 </s>a2 </s>"
    text, masked = get_template("plain").render([("user", "<img>\n"), ("assistant", "a dog")])
    assert text == "<img>\na dog\n" and _targets(text, masked) == "a dog\n"
    with pytest.raises(ValueError, match="unknown conversation template 'v2'"):
        get_template("v2")


def test_caption_cleaner_matches_official_rules():
    clean = CaptionCleaner(max_words=5)
    assert clean("An *Astronaut*  poses\t\tin #white ~suit today ok") == "an astronaut poses in white"
    assert clean(" One\ttab ") == "one\ttab"  # a single whitespace character is kept
    with pytest.raises(TypeError, match="pick one reference"):
        clean(["a", "b"])


def test_tag_removal_is_the_official_regex_in_one_pass():
    """remove_tags == re.sub(r"<.*?>", "", text): a tag ends at the first > of its line."""
    import random
    import re

    rng = random.Random(0)
    texts = ["a <b>c</b> d", "x < y > z", "<a\nb>", "<<a>", "a<b", "<\n>", "<" * 300 + ">", "<x>" * 50]
    texts += ["".join(rng.choice("<>\nab ") for _ in range(rng.randint(0, 12))) for _ in range(20000)]
    for text in texts:
        assert remove_tags(text) == re.sub(r"<.*?>", "", text), repr(text)
    assert CaptionCleaner(remove_html=True)("A <b>Bold</b> cat<br/>") == "a bold cat"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    entries = json.loads((DATA_DIR / "benchmark_corpus/captioning/coco_karpathy_test.json").read_text())
    texts = [c for e in entries for c in e["caption"]]
    return build_tiny_processor(texts, tmp_path_factory.mktemp("tiny"), vocab_size=700)


def test_tiny_processor_builds_and_reloads(tiny):
    assert tiny.vocab.text_vocab_size == 700 and tiny.vocab.tokens_per_image == 18
    assert (tiny.vocab.boi_id, tiny.vocab.eoi_id) == (716, 717)
    sample = CaptionSample(Image.fromarray(data.astronaut()), "A man rides a horse", key="a")
    out = tiny([sample])
    ids = out["input_ids"]
    assert ids.shape[0] == 2 and out["contiguous_signal"].shape[-1] == 4 * 32
    codes = ids[:, 0][:, (out["vision_indices"][0] >= 1) & (out["vision_indices"][0] <= 16)]
    assert codes.min() >= 700 and codes.max() < 716
    assert len(codes.unique()) > 4  # the seeded weights give varied codes, not one constant
    decoded = tiny.decode(ids[:, 0])
    assert decoded.text == "<img_ph>\na man rides a horse"
    # same seed, same weights: the tokenizer is reproducible
    again = build_tiny_vision_tokenizer(seed=0)
    assert again.fingerprint() == tiny.vision_tokenizer.fingerprint()
    assert build_tiny_vision_tokenizer(seed=1).fingerprint() != again.fingerprint()


def test_generation_prompt_and_multi_image_conversation(tiny):
    a, b = Image.fromarray(data.astronaut()), Image.fromarray(data.coffee())
    conv = ConversationSample(
        [Turn("user", "<image> compare with <image>"), Turn("assistant", "The first is a person.")],
        [a, b],
        "m",
    )
    out = tiny([conv])
    vi = out["vision_indices"][0]
    assert (vi == 0).sum() == 2 and (vi == 17).sum() == 2
    # the two images are different pictures: their code spans differ
    starts = (vi == 0).nonzero().flatten()
    first, second = (
        out["input_ids"][:, 0, starts[0] : starts[0] + 18],
        out["input_ids"][:, 0, starts[1] : starts[1] + 18],
    )
    assert not torch.equal(first, second)
    labels = out["labels"][:, 0]
    assert (labels[:, vi < 18] == -100).all()  # images in user turns are not targets (v1 masking)
    assert tiny.text_tokenizer.decode(labels[0][labels[0] >= 0]) == "The first is a person. </s>"
    prompts = tiny([conv, ConversationSample([Turn("user", "hi")], key="t")], generation=True)
    mask = prompts["attention_mask"][1]
    pad = mask.numel() - int(mask.sum())
    assert pad > 0 and (mask[:pad] == 0).all() and (mask[pad:] == 1).all()  # left padding
    assert prompts["input_ids"][0, 1, -1] == tiny.text_tokenizer.convert_tokens_to_ids(":")  # "ASSISTANT:"


def test_processor_rejects_mismatched_preprocessor(tiny):
    from libra.tokenizer.image_processing import ImagePreprocessor

    with pytest.raises(ValueError, match="preprocessor size 336 != vision tokenizer resolution 56"):
        LibraProcessor(tiny.text_tokenizer, tiny.vision_tokenizer, ImagePreprocessor(size=336))


def _target_text(processor, out, b=0):
    labels = out["labels"][0, b]
    text_targets = labels[(labels >= 0) & (labels < processor.vocab.text_vocab_size)]
    return processor.text_tokenizer.decode(text_targets, skip_special_tokens=False)


def test_caption_instruction_and_mask_strategies(tiny, tmp_path):
    image = Image.fromarray(data.astronaut())
    sample = CaptionSample(image, "A man rides a horse", key="i", instruction=" Describe the image. ")
    out = tiny([sample])
    text = tiny.text_tokenizer.decode(out["input_ids"][0, 0][out["vision_indices"][0] == 18])
    assert text == "<s>\nDescribe the image.\na man rides a horse"
    assert _target_text(tiny, out) == "a man rides a horse"  # instruction and its newlines are not
    vi = out["vision_indices"][0]
    assert (out["labels"][:, 0][:, (vi >= 1) & (vi <= 17)] >= 0).all()  # codes + eoi are targets
    prompt_masked = LibraProcessor(tiny.text_tokenizer, tiny.vision_tokenizer, caption_mask="prompt")
    out = prompt_masked([sample])
    assert (out["labels"][:, 0][:, vi < 18] == -100).all()  # "prompt": images are not targets either
    assert _target_text(prompt_masked, out) == "a man rides a horse"
    # t2i with eos: caption and image are targets, the eos right after the image is not (official rule)
    with_eos = LibraProcessor(tiny.text_tokenizer, tiny.vision_tokenizer, add_eos=True)
    out = with_eos([CaptionSample(image, "A horse", key="t", task="t2i")])
    assert out["input_ids"][0, 0, -1] == 2 and out["labels"][0, 0, -1] == -100
    assert _target_text(with_eos, out) == "a horse"
    with pytest.raises(ValueError, match="caption_mask"):
        LibraProcessor(tiny.text_tokenizer, tiny.vision_tokenizer, caption_mask="all")
