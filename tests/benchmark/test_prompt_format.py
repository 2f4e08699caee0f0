"""Each stage is asked in the layout it was trained on: a stage-1 model (image, newline, caption) gets
the caption layout with an empty prompt, exactly the part of its training samples before the
caption; an instruction-tuned model gets the chat turn its training conversations open with."""

from itertools import islice

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tiny_bench import CONF, SYNTHETIC

from libra.benchmark.tasks import prompt_sample
from libra.data.skips import Skipped
from libra.data.synthetic_readers import synthetic_instructions, synthetic_laion
from libra.tokenizer.processor import LibraProcessor
from libra.tokenizer.samples import ConversationSample

SMALL = [f"synthetic.{key}={value}" for key, value in SYNTHETIC.items()]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides)


def test_pretrain_experiment_benchmarks_in_the_caption_layout():
    task = _compose(["experiment=pretrain"]).benchmark.coco_caption
    assert (task.prompt_format, task.prompt) == ("caption", "")
    for experiment in ("instruct", "tiny", "benchmark_official"):
        tasks = _compose([f"experiment={experiment}"]).benchmark
        assert {t.prompt_format for t in tasks.values()} == {"chat"}, experiment


def _first_sample(reader):
    for entry in islice(iter(reader), 20):
        sample = getattr(entry, "item", entry)  # the LAION stream wraps its samples
        if not isinstance(sample, Skipped):
            return sample
    raise AssertionError("no readable training sample")


def test_stage1_caption_prompt_is_the_training_samples_prefix(tiny_checkpoint):
    checkpoint, cache = tiny_checkpoint
    processor = LibraProcessor.from_pretrained(checkpoint)
    collator = processor.collator
    cfg = _compose(["benchmark=synthetic_caption_stage1", f"cache_dir={cache}", *SMALL])
    item = instantiate(cfg.benchmark.synthetic_caption).items()[0]
    prompt_text = collator.render(item.make_sample(), generation=True)[0]
    # what stage 1 trains on: LAION-layout shards, image then caption
    train = _first_sample(synthetic_laion(str(cache), "train", SYNTHETIC, resampled=False, shuffle=False))
    train_text = collator.render(train, generation=False)[0]
    assert train_text == prompt_text + collator.caption_cleaner(train.caption)
    assert "ASSISTANT" not in prompt_text and prompt_text.endswith("\n")
    prompt_ids = collator.encode(item.make_sample(), generation=True).ids
    assert collator.encode(train).ids[: len(prompt_ids)] == prompt_ids


def test_chat_prompt_is_the_training_conversations_prefix(tiny_checkpoint):
    checkpoint, cache = tiny_checkpoint
    collator = LibraProcessor.from_pretrained(checkpoint).collator
    conversation = next(
        s
        for s in (_first_sample([e]) for e in synthetic_instructions(str(cache), "train", SYNTHETIC))
        if s.images
    )
    assert isinstance(conversation, ConversationSample)
    question = conversation.turns[0].text.replace("<image>", "").strip()
    prompt = prompt_sample("chat", conversation.images[0], question, "q")
    prompt_text = collator.render(prompt, generation=True)[0]
    train_text = collator.render(conversation, generation=False)[0]
    assert train_text.startswith(prompt_text) and prompt_text.endswith("ASSISTANT:")
    prompt_ids = collator.encode(prompt, generation=True).ids
    assert collator.encode(conversation).ids[: len(prompt_ids)] == prompt_ids


@pytest.mark.parametrize("prompt_format", ["chat", "caption"])
def test_vqa_tasks_take_either_layout(tiny_checkpoint, prompt_format):
    checkpoint, cache = tiny_checkpoint
    collator = LibraProcessor.from_pretrained(checkpoint).collator
    cfg = _compose(["benchmark=synthetic_vqa", f"cache_dir={cache}", *SMALL])
    cfg.benchmark.synthetic_vqa.prompt_format = prompt_format
    item = instantiate(cfg.benchmark.synthetic_vqa).items()[0]
    text = collator.render(item.make_sample(), generation=True)[0]
    image_block = collator.image_block(1)
    if prompt_format == "caption":
        assert text == f"{image_block}\n{item.prompt}\n"
    else:
        assert text.endswith(f"{image_block}\n{item.prompt} ASSISTANT:")
