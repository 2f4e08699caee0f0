"""LibraProcessor: processor_tiny parity (ids, labels exact), bad samples, padding, truncation,
decode round trips, save/load, token cache."""

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

from libra.tokenizer.collator import SampleError
from libra.tokenizer.image_processing import ImageError
from libra.tokenizer.processor import TEXT_SETTINGS, LibraProcessor
from libra.tokenizer.samples import CaptionSample, ConversationSample, PromptSample, TextSample, Turn

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
VT_DIR = DATA_DIR / "vision_tokenizer_tiny"
PROC_DIR = DATA_DIR / "processor_tiny"
MODEL_DIR = VT_DIR / "model"  # the tiny official-layout checkpoint folder


CASES = json.loads((PROC_DIR / "cases.json").read_text())["cases"]


def _check(expected, name, out, keys=("input_ids", "attention_mask", "vision_indices", "labels")):
    for key in keys:
        assert torch.equal(out[key], expected[f"{name}.{key}"]), f"{name}.{key}"
    signal = expected.get(f"{name}.contiguous_signal")
    if signal is not None and signal.abs().max() > 0:
        assert (out["contiguous_signal"] - signal).abs().max() < 1e-5, name


def _conversations():
    entries = json.loads((PROC_DIR / "instruction.json").read_text())
    samples = []
    for entry in entries:
        turns = [
            Turn("user" if m["from"] == "human" else "assistant", m["value"]) for m in entry["conversations"]
        ]
        images = [Image.open(PROC_DIR / "images" / entry["image"])] if "image" in entry else []
        samples.append(ConversationSample(turns, images, key=entry["id"]))
    return samples


def test_laion_i2t_with_truncation(proc_expected):
    processor = LibraProcessor.from_pretrained(MODEL_DIR, max_length=48)
    samples = [
        CaptionSample(Image.open(PROC_DIR / i["image"]), i["raw_caption"], key=str(n))
        for n, i in enumerate(CASES["laion_i2t"]["inputs"])
    ]
    _check(proc_expected, "laion_i2t", processor(samples))


def test_instruction_v1(processor, proc_expected):
    samples = _conversations()
    _check(proc_expected, "instruction", processor(samples))
    batch = processor.collator(samples)
    assert batch.pixel_values.dtype == torch.uint8  # workers ship uint8; to_model_inputs normalises
    pixels = processor.preprocessor.normalize(batch.pixel_values)
    assert (pixels - proc_expected["instruction.pixel_values"]).abs().max() <= 1e-6
    # text-only: same ids/labels; we return no signal instead of the reference's all-zero one
    out = processor(samples[2:])
    _check(proc_expected, "instruction_text_only", out)
    assert out["contiguous_signal"] is None


def test_text_only_raw_and_demo_prompts(processor, proc_expected):
    texts = CASES["text_only_raw"]["texts"]
    out = processor([TextSample(t) for t in texts], generation=True, padding_side="right")
    _check(proc_expected, "text_only_raw", out, keys=("input_ids", "attention_mask", "vision_indices"))
    assert out["contiguous_signal"] is None and "labels" not in out
    prompts = []
    for p in CASES["demo_inference"]["prompts"]:
        if "image" in p:
            image = Image.open(PROC_DIR / "images" / p["image"])
            prompts.append(ConversationSample([Turn("user", "<image>\n" + p["text"])], [image]))
        else:
            prompts.append(ConversationSample([Turn("user", p["text"])]))
    out = processor(prompts, generation=True)  # left padding by default for prompts
    _check(proc_expected, "demo_inference", out, keys=("input_ids", "attention_mask", "vision_indices"))


def test_left_padding_keeps_labels_on_the_same_tokens(processor):
    samples = _conversations()
    right = processor(samples)
    left = processor.collator(samples, padding_side="left")
    left = processor.to_model_inputs(left)
    for b in range(3):
        r, l_ = right["attention_mask"][b].bool(), left["attention_mask"][b].bool()
        assert torch.equal(right["labels"][:, b][:, r], left["labels"][:, b][:, l_])
        assert torch.equal(right["input_ids"][:, b][:, r], left["input_ids"][:, b][:, l_])


def test_truncation_never_cuts_an_image(processor):
    image = Image.fromarray(data.astronaut())
    conv = ConversationSample([Turn("user", "hi <image>"), Turn("assistant", "a cat")], [image], key="c")
    full = processor.collator([conv])
    start = int((full.vision_indices[0] == 0).nonzero())
    processor.collator.max_length = start + 5  # would cut the image after 4 of its 18 positions
    try:
        cut = processor.collator([conv])
    finally:
        processor.collator.max_length = None
    assert cut.text_ids.shape[1] == start and cut.num_images == 0 and cut.pixel_values is None
    assert torch.equal(cut.text_ids[0], full.text_ids[0, :start])


def _png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_bad_samples_name_the_sample(processor, tmp_path):
    image = Image.fromarray(data.astronaut())
    with pytest.raises(SampleError, match="'two-tags'.*2 <image> tag.*1 image"):
        processor(
            [
                ConversationSample(
                    [Turn("user", "<image><image> x"), Turn("assistant", "y")], [image], "two-tags"
                )
            ]
        )
    with pytest.raises(SampleError, match="'no-tag'.*0 <image> tag.*1 image"):
        processor([ConversationSample([Turn("user", "x"), Turn("assistant", "y")], [image], "no-tag")])
    with pytest.raises(SampleError, match="'stray'.*18 <img_ph> tokens for 0 image"):
        processor([TextSample(" ".join(["<img_ph>"] * 18) + " hi", key="stray")])
    with pytest.raises(SampleError, match="'ends-user'.*ends with the user"):
        processor(
            [
                ConversationSample(
                    [Turn("user", "x"), Turn("assistant", "y"), Turn("user", "z")], key="ends-user"
                )
            ]
        )
    with pytest.raises(SampleError, match="'roles'.*turn 1"):
        processor([ConversationSample([Turn("user", "x"), Turn("user", "y")], key="roles")])
    with pytest.raises(ImageError, match="'bad-bytes'.*not a readable image"):
        processor([CaptionSample(b"\xff\xd8\xff\xe0 not really a jpeg", "a cat", key="bad-bytes")])
    text_file = tmp_path / "caption.jpg"
    text_file.write_text("a cat on a mat")
    with pytest.raises(ImageError, match="caption.jpg"):
        processor([CaptionSample(text_file, "a cat", key=str(text_file))])
    huge = tmp_path / "panorama.png"  # the header of a 20000 x 20000 PNG: 400 MP, PIL refuses to decode it
    huge.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT")
    )
    with pytest.raises(ImageError, match="'panorama.png' is too large to decode.*downscale it"):
        processor([CaptionSample(huge, "a cat", key="panorama.png")])
    with pytest.raises(ImageError, match="'empty'.*0x0"):
        processor([CaptionSample(Image.new("RGB", (0, 0)), "a cat", key="empty")])
    with pytest.raises(ImageError, match="'needle'.*1x5000"):
        processor([CaptionSample(Image.new("RGB", (1, 5000)), "a cat", key="needle")])


def test_t2i_targets_and_generation_prompt(processor):
    image = Image.fromarray(data.chelsea())
    train = processor([CaptionSample(image, "a cat", key="t", task="t2i", hide_image_features=True)])
    vi = train["vision_indices"][0]
    assert (vi < 18).sum() == 18 and train["contiguous_signal"].abs().max() == 0  # features hidden
    labels = train["labels"][:, 0]
    image_pos = (vi >= 1) & (vi <= 17)
    assert torch.equal(labels[:, image_pos], train["input_ids"][:, 0][:, image_pos])  # codes + eoi
    assert (labels[:, vi == 0] == -100).all()  # boi never a target
    prompt = processor([CaptionSample(None, "a cat", key="g", task="t2i")], generation=True)
    assert prompt["input_ids"][0, 0, -1] == processor.vocab.boi_id
    assert prompt["vision_indices"][0, -1] == 0  # boi of the image to generate (docs/design.md B10)


def test_decode_round_trips_benchmark_captions(processor):
    folder = DATA_DIR / "benchmark_corpus/captioning"
    candidates = [e["caption"] for e in json.loads((folder / "captions_results.json").read_text())]
    references = [
        c for e in json.loads((folder / "coco_karpathy_test.json").read_text()) for c in e["caption"]
    ]
    captions = candidates + references
    batch = processor([TextSample(c) for c in captions], generation=True)
    decoded = processor.batch_decode(batch["input_ids"])
    # The one normalisation: "<s>", "</s>", "<unk>" written in the text are read as the special
    # tokens (Llama behaviour) and dropped by decode. Everything else (unicode via byte fallback,
    # spacing, empty captions) comes back exactly.
    expected = [c.replace("<unk>", "").replace("</s>", "").replace("<s>", "") for c in captions]
    mismatches = [(c, d) for c, d in zip(expected, decoded) if d != c]
    assert not mismatches, mismatches[:3]
    assert sum(c != e for c, e in zip(captions, expected)) == 1  # only the caption with specials
    assert len(captions) == 640 + 3203


def test_decode_image_spans_to_pixels(processor, vt_expected):
    image = Image.open(PROC_DIR / "images/duck_drawn.png")
    out = processor([CaptionSample(image, "a duck", key="d")])
    decoded = processor.decode(out["input_ids"][:, 0])
    assert decoded.text == "<img_ph>\na duck" and len(decoded.images) == 1
    pixels = processor.decode_images(decoded.images)
    direct = processor.vision_tokenizer.decode_indices(decoded.images[0][None])
    assert torch.equal(pixels, direct)
    pil = processor.images_to_pil(decoded.images)[0]
    assert pil.size == (56, 56) and pil.mode == "RGB"
    cut = processor.decode(out["input_ids"][:, 0, :10])  # generation stopped inside the image
    assert cut.incomplete_image and cut.images == []


def test_save_pretrained_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = LibraProcessor.from_pretrained(tmp_path)
    samples = _conversations()
    a, b = processor(samples), loaded(samples)
    for key in ("input_ids", "attention_mask", "vision_indices", "labels", "contiguous_signal"):
        assert torch.equal(a[key], b[key]), key


def test_text_settings_travel_with_the_folder(tmp_path):
    llama = LibraProcessor.from_pretrained(MODEL_DIR, template="llama_2", max_length=64, add_eos=True)
    llama.save_pretrained(tmp_path)
    loaded = LibraProcessor.from_pretrained(tmp_path)
    assert loaded.text_settings == llama.text_settings
    assert loaded.collator.template.name == "llama_2"
    samples = _conversations()
    assert torch.equal(loaded(samples)["input_ids"], llama(samples)["input_ids"])
    # an explicit argument wins over the saved file; a folder without the file gets the defaults
    assert LibraProcessor.from_pretrained(tmp_path, template="v1").collator.template.name == "v1"
    assert LibraProcessor.from_pretrained(MODEL_DIR).text_settings["template"] == "v1"


def test_token_cache_gives_identical_inputs(tmp_path):
    cached = LibraProcessor.from_pretrained(MODEL_DIR, token_cache=tmp_path / "cache")
    plain = LibraProcessor.from_pretrained(MODEL_DIR)
    samples = _conversations()
    first = cached(samples)
    assert len(cached.token_cache) == 2
    batch = cached.collator(samples)
    assert batch.pixel_values is None and batch.cached_indices.shape == (2, 16, 2)
    second = cached.to_model_inputs(batch)
    reference = plain(samples)
    for key in ("input_ids", "labels", "contiguous_signal"):
        assert torch.equal(first[key], reference[key]) and torch.equal(second[key], reference[key]), key
    # another dtype is another key (bf16 codes may differ, docs/design.md B20)
    bf16 = LibraProcessor.from_pretrained(MODEL_DIR, dtype=torch.bfloat16, token_cache=tmp_path / "cache")
    assert bf16.collator(samples).pixel_values.shape[0] == 2


def test_collator_pickles_for_dataloader_workers(processor):
    import pickle

    clone = pickle.loads(pickle.dumps(processor.collator))
    samples = _conversations()
    a, b = processor.collator(samples), clone(samples)
    for key in ("text_ids", "attention_mask", "vision_indices", "image_slot", "label_mask", "pixel_values"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert not hasattr(clone, "vision_tokenizer")  # workers never get the CLIP weights


def test_uint8_batches_give_the_inputs_of_float_batches(processor):
    samples = _conversations()
    uint8 = processor.collator(samples)
    assert uint8.pixel_values.dtype == torch.uint8
    # the same images handed over already normalised: a float batch, as before the uint8 split
    normalised = [
        ConversationSample(s.turns, [processor.preprocessor(im) for im in s.images], key=s.key)
        for s in samples
    ]
    floats = processor.collator(normalised)
    assert floats.pixel_values.dtype == torch.float32
    assert torch.equal(processor.preprocessor.normalize(uint8.pixel_values), floats.pixel_values)
    # one normalised image in the batch makes the whole batch float, with the same values
    mixed = processor.collator([normalised[0], *samples[1:]])
    assert torch.equal(mixed.pixel_values, floats.pixel_values)
    a, b = processor.to_model_inputs(uint8), processor.to_model_inputs(floats)
    for key in ("input_ids", "attention_mask", "vision_indices", "labels", "contiguous_signal"):
        assert torch.equal(a[key], b[key]), key


def test_token_cache_keys_do_not_depend_on_the_pixel_dtype(tmp_path):
    cached = LibraProcessor.from_pretrained(MODEL_DIR, token_cache=tmp_path / "cache")
    samples = _conversations()
    cached(samples)  # written from uint8 worker pixels
    normalised = [
        ConversationSample(s.turns, [cached.preprocessor(im) for im in s.images], key=s.key) for s in samples
    ]
    batch = cached.collator(normalised)
    assert batch.pixel_values is None and batch.cached_indices.shape[0] == 2


# ---- the transformers-style API: chat messages, processor(text=..., images=...), batch_decode ----------


def _sample_inputs(processor, turns, images):
    return processor([ConversationSample(turns, images, key="s")], generation=True)


def _assert_same_inputs(a, b):
    for key in ("input_ids", "attention_mask", "vision_indices", "contiguous_signal"):
        if a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, key
        else:
            assert torch.equal(a[key], b[key]), key


def test_chat_messages_give_the_ids_of_the_conversation_sample(processor):
    duck = Image.open(PROC_DIR / "images/duck_drawn.png")
    retina = Image.open(PROC_DIR / "images/retina.png")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A duck."},
        # images go first in their turn, whatever the order of the parts (LLaVA's layout)
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image"}]},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.count("<image>") == 2 and prompt.endswith("ASSISTANT:")
    turns = [
        Turn("user", "<image>\nWhat is this?"),
        Turn("assistant", "A duck."),
        Turn("user", "<image>\nAnd this?"),
    ]
    expected = _sample_inputs(processor, turns, [duck, retina])
    _assert_same_inputs(processor(text=prompt, images=[duck, retina], return_tensors="pt"), expected)
    _assert_same_inputs(processor(text=[prompt], images=[[duck, retina]]), expected)  # one list per prompt

    text_only = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    _assert_same_inputs(processor(text=text_only), _sample_inputs(processor, [Turn("user", "hi")], []))
    # without the generation prompt, a finished conversation renders as the training text
    full = processor.apply_chat_template(messages[:2])
    assert full.endswith("ASSISTANT: A duck. </s>")


def test_a_list_of_prompts_shares_out_a_flat_image_list_and_pads_left(processor):
    duck = Image.open(PROC_DIR / "images/duck_drawn.png")
    one = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]}],
        add_generation_prompt=True,
    )
    none = processor.apply_chat_template([{"role": "user", "content": "a long question with words"}], True)
    batch = processor(text=[none, one], images=duck)
    alone = processor(text=one, images=duck)
    n = alone["input_ids"].shape[-1]
    assert torch.equal(batch["input_ids"][:, 1, -n:], alone["input_ids"][:, 0])
    assert torch.equal(batch["contiguous_signal"][1, -n:], alone["contiguous_signal"][0])
    width = batch["input_ids"].shape[-1]
    assert batch["attention_mask"][0].sum() < width and batch["attention_mask"][0, -1] == 1  # left padded
    right = processor(text=[none, one], images=duck, padding_side="right")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0


def test_bad_chat_input_is_refused_with_the_fix(processor):
    duck = Image.open(PROC_DIR / "images/duck_drawn.png")
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}
    with pytest.raises(ValueError, match="system messages are not supported"):
        processor.apply_chat_template([{"role": "system", "content": "be brief"}, user], True)
    with pytest.raises(ValueError, match="pass add_generation_prompt=True"):
        processor.apply_chat_template([user])
    with pytest.raises(ValueError, match=r"messages\[0\].content\[1\]"):
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "video"}]}], True
        )
    with pytest.raises(SampleError, match="turn 1 is 'user'"):
        processor.apply_chat_template([user, user], True)
    prompt = processor.apply_chat_template([user], add_generation_prompt=True)
    with pytest.raises(ValueError, match="1 <image> tag"):
        processor(text=prompt)
    with pytest.raises(ValueError, match="1 <image> tag"):
        processor(text=[prompt], images=[[duck, duck]])
    with pytest.raises(ValueError, match="return_tensors='np'"):
        processor(text=prompt, images=duck, return_tensors="np")
    with pytest.raises(TypeError, match="either samples or text"):
        processor([TextSample("x")], text=prompt)
    with pytest.raises(SampleError, match="PromptSample is a prompt"):
        processor([PromptSample("a caption")])


def test_batch_decode_gives_strings_with_or_without_image_placeholders(processor):
    image = Image.open(PROC_DIR / "images/duck_drawn.png")
    out = processor([CaptionSample(image, "a duck", key="d")])
    assert processor.batch_decode(out["input_ids"]) == ["<img_ph>\na duck"]
    assert processor.batch_decode(out["input_ids"], skip_special_tokens=True) == ["\na duck"]
    (images,) = processor.batch_decode_images(out["input_ids"])
    assert len(images) == 1 and images[0].size == (56, 56)
    assert processor.batch_decode_images(out["input_ids"], prompt_length=out["input_ids"].shape[-1]) == [[]]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"template": "v1",', "is unreadable"),
        ('["v1"]', "must hold a JSON object"),
        ('{"template": "v1", "max_lenght": 64}', r"unknown text setting\(s\) \['max_lenght'\]"),
    ],
    ids=["does not parse", "not an object", "unknown key"],
)
def test_a_bad_text_settings_file_is_named(processor, tmp_path, content, error):
    processor.save_pretrained(tmp_path)
    settings = tmp_path / "libra_processor.json"
    assert sorted(json.loads(settings.read_text())) == sorted(TEXT_SETTINGS)  # the file holds them all
    settings.write_text(content)
    with pytest.raises(ValueError, match=rf"{settings}.*{error}"):
        LibraProcessor.from_pretrained(tmp_path)
