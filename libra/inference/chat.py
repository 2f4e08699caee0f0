"""`task=chat`: answer one prompt about an optional image with a checkpoint folder.

    python run.py task=chat checkpoint=<folder> image=cat.jpg prompt="What is unusual here?"

The prompt is built like the official demo (docs/design.md §4.4): the image's tokens, a newline, the text,
wrapped in the v1 conversation template; greedy decoding unless `temperature` > 0 (sampled, seeded by
`seed`, as `task=generate` is: the same command gives the same answer). The answer is
printed and written to `<run dir>/chat.json`; images the model draws in its answer go to PNGs there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from libra.pretrained import default_device, load_pretrained
from libra.tokenizer.collator import IMAGE_TAG
from libra.tokenizer.image_processing import open_image
from libra.tokenizer.samples import ConversationSample, Turn


@torch.no_grad()
def chat(cfg: DictConfig) -> str:
    """Generate the answer to `cfg.prompt` (about `cfg.image`, if given); returns the answer text."""
    device = default_device()
    model, processor = load_pretrained(cfg.checkpoint, device)
    image = os.path.expanduser(cfg.image) if cfg.image else None  # ~ as in checkpoint=
    images = [open_image(image, key=image)] if image else []
    text = f"{IMAGE_TAG}\n{cfg.prompt}" if images else cfg.prompt
    # the image's path names the sample: the preprocessor's errors (an extreme aspect ratio) name its key
    sample = ConversationSample([Turn("user", text)], images, key=image or "chat")
    inputs = processor([sample], generation=True, device=device)
    prompt_length = inputs["input_ids"].shape[-1]
    context = model.config.max_position_embeddings
    if prompt_length + cfg.max_new_tokens > context:
        raise ValueError(
            f"prompt={cfg.prompt[:40]!r}...: {prompt_length} prompt tokens (an image is "
            f"{processor.vocab.tokens_per_image}) + max_new_tokens={cfg.max_new_tokens} exceed the model's "
            f"context of {context} tokens; shorten the prompt or lower max_new_tokens"
        )
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    ids = model.generate(
        **inputs,
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature if cfg.temperature > 0 else None,
        generator=generator,
    )
    answer = processor.decode(ids[:, 0, prompt_length:])
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    image_files = []
    for i, picture in enumerate(processor.images_to_pil(answer.images) if answer.images else []):
        image_files.append(str(run_dir / f"chat_image_{i}.png"))
        picture.save(image_files[-1])
    record = {"prompt": cfg.prompt, "image": image, "answer": answer.text.strip(), "images": image_files}
    (run_dir / "chat.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"USER: {cfg.prompt}\nASSISTANT: {record['answer']}", flush=True)
    return record["answer"]
