"""The Python API of the README (`from libra import LibraForCausalLM, LibraProcessor`) on a tiny export:
the documented snippet answers exactly as `task=chat`, text-to-image draws what `task=generate` draws,
and the transformers Auto classes and run dirs load the folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from skimage import data

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def _task_config(tmp_path: Path, **values):
    base = {"checkpoint": None, "prompt": None, "image": None, "max_new_tokens": 12, "temperature": 0.0}
    return OmegaConf.create({**base, "run_dir": str(tmp_path / "run"), "seed": 0, **values})


def test_readme_snippet_answers_like_task_chat(tiny_export, photo, tmp_path):
    from libra import LibraForCausalLM, LibraProcessor
    from libra.inference.chat import chat

    # the README snippet, verbatim but for the folder and the image
    folder, image = tiny_export, Image.open(photo)
    model = LibraForCausalLM.from_pretrained(folder)
    processor = LibraProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12)
    text = processor.batch_decode(out, skip_special_tokens=True)[0]

    expected = chat(_task_config(tmp_path, checkpoint=str(folder), image=str(photo), prompt=QUESTION))
    answer = processor.batch_decode(out[:, :, inputs["input_ids"].shape[-1] :], skip_special_tokens=True)[0]
    assert answer.strip() == expected and len(expected) > 0
    # as in transformers, the full decode holds the prompt (image dropped) and then the answer
    assert text.startswith("A chat between") and f"{QUESTION} ASSISTANT:" in text
    assert text.rstrip().endswith(expected)
    assert "<img_ph>" in processor.batch_decode(out)[0]  # the image span without skip_special_tokens


def test_sampled_task_chat_follows_its_seed(tiny_export, photo, tmp_path):
    """`task=chat temperature=1.0 seed=3` answers as the Python API with a generator seeded 3, however
    the global random state stands (it sampled from torch's global generator, so seed= did nothing)."""
    from libra import LibraForCausalLM, LibraProcessor
    from libra.inference.chat import chat

    model = LibraForCausalLM.from_pretrained(tiny_export)
    processor = LibraProcessor.from_pretrained(tiny_export)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = processor(text=processor.apply_chat_template(messages, True), images=Image.open(photo))
    out = model.generate(
        **inputs,
        max_new_tokens=12,
        do_sample=True,
        temperature=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    expected = processor.batch_decode(out[:, :, inputs["input_ids"].shape[-1] :], skip_special_tokens=True)[0]

    cfg = _task_config(tmp_path, checkpoint=str(tiny_export), image=str(photo), prompt=QUESTION)
    cfg.temperature, cfg.seed = 1.0, 3
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        assert chat(cfg) == expected.strip()


def test_task_chat_errors_name_the_image_file(tiny_export, tmp_path):
    from libra.inference.chat import chat
    from libra.tokenizer.image_processing import ImageError

    strip = tmp_path / "banner.png"  # 400:1, beyond the preprocessor's max_aspect_ratio
    Image.new("RGB", (4000, 10), (200, 10, 10)).save(strip)
    cfg = _task_config(tmp_path, checkpoint=str(tiny_export), image=str(strip), prompt=QUESTION)
    with pytest.raises(ImageError, match="banner.png' is 4000x10: aspect ratio"):
        chat(cfg)


def test_text_to_image_gives_the_image_task_generate_writes(tiny_export, tmp_path):
    from libra import LibraForCausalLM, LibraProcessor
    from libra.inference.generate import generate_images

    model = LibraForCausalLM.from_pretrained(tiny_export)
    processor = LibraProcessor.from_pretrained(tiny_export)
    inputs = processor(text=processor.text_to_image_prompt("a red circle"))
    out = model.generate(**inputs, max_new_tokens=processor.vocab.tokens_per_image - 1)
    (images,) = processor.batch_decode_images(out, prompt_length=inputs["input_ids"].shape[-1])

    (png,) = generate_images(_task_config(tmp_path, checkpoint=str(tiny_export), prompt="a red circle"))
    assert len(images) == 1 and images[0].size == (56, 56) and images[0].mode == "RGB"
    assert np.array_equal(np.asarray(images[0]), np.asarray(Image.open(png)))


def test_batched_prompts_are_left_padded_and_answer_as_alone(tiny_export, photo):
    from libra import LibraForCausalLM, LibraProcessor

    model = LibraForCausalLM.from_pretrained(tiny_export)
    processor = LibraProcessor.from_pretrained(tiny_export)
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text_only = [{"role": "user", "content": "Say hello."}]
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in (with_image, text_only)]
    image = Image.open(photo)

    batch = processor(text=prompts, images=[image], return_tensors="pt")
    assert batch["input_ids"].shape[:2] == (processor.vocab.num_codebook, 2)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padding
    n = batch["input_ids"].shape[-1]
    together = processor.batch_decode(model.generate(**batch, max_new_tokens=8)[:, :, n:])
    for i, prompt in enumerate(prompts):
        alone = processor(text=prompt, images=[image] if i == 0 else None)
        ids = model.generate(**alone, max_new_tokens=8)
        assert processor.batch_decode(ids[:, :, alone["input_ids"].shape[-1] :]) == [together[i]]


def test_auto_classes_and_run_dirs_load_the_checkpoint(tiny_export, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    from libra import LibraForCausalLM, LibraProcessor
    from libra.model import LibraConfig

    assert isinstance(AutoConfig.from_pretrained(tiny_export), LibraConfig)
    auto_model = AutoModelForCausalLM.from_pretrained(tiny_export)
    assert type(auto_model) is LibraForCausalLM
    assert type(AutoProcessor.from_pretrained(tiny_export)) is LibraProcessor

    run_dir = tmp_path / "run"  # a finished training run: the resolver picks its export
    run_dir.mkdir()
    (run_dir / "export").symlink_to(tiny_export, target_is_directory=True)
    from_run = LibraForCausalLM.from_pretrained(run_dir)
    for (name, a), (_, b) in zip(auto_model.state_dict().items(), from_run.state_dict().items()):
        assert torch.equal(a, b), name
    processor = LibraProcessor.from_pretrained(run_dir)
    assert processor.vocab.tokens_per_image == 18


def test_libra_names_the_api_classes_and_nothing_else():
    """`import libra` gives the two API classes (libra/api.py); other names raise AttributeError."""
    import libra
    import libra.model
    import libra.tokenizer.processor

    assert libra.LibraForCausalLM is libra.model.LibraForCausalLM
    assert libra.LibraProcessor is libra.tokenizer.processor.LibraProcessor
    with pytest.raises(AttributeError, match="LibraModelz"):
        libra.LibraModelz  # noqa: B018
