"""`task=generate`: text to image with a checkpoint folder; the image tokens become PNGs.

    python run.py task=generate checkpoint=<folder> prompt="a red bus"
    python run.py task=generate checkpoint=<folder> prompt="a red bus" temperature=1.0 seed=3

The prompt is the caption followed by `<img_gen>` (the begin-of-image token, docs/design.md §1.3), as in the
text-to-image training samples; the model then writes exactly one image: grid x grid codes per
codebook and the end-of-image token. The pixel decoder of the vision tokenizer turns the codes into
`<run dir>/generated_0.png`. Greedy by default; `temperature` > 0 samples (seeded by `seed`).

An export says what trained it (`training.json`, libra/pretrained.py `trained_for_text_to_image`). When
no text-to-image sample was ever among its training data (the tiny default trains on conversations
and captions only), the image cannot follow the prompt, and the task says so before it draws.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from libra.pretrained import (
    NOT_TRAINED_TO_DRAW,
    default_device,
    load_pretrained,
    read_training_record,
    resolve_pretrained,
    trained_for_text_to_image,
)
from libra.tokenizer.samples import CaptionSample


@torch.no_grad()
def generate_images(cfg: DictConfig) -> list[Path]:
    """Draw one image for `cfg.prompt`; returns the PNG paths written to the run dir."""
    device = default_device()
    resolved = resolve_pretrained(cfg.checkpoint)  # once: the weights and their record are one checkpoint
    model, processor = load_pretrained(resolved, device)
    trained = trained_for_text_to_image(read_training_record(resolved))
    if trained is False:
        print(
            f"[libra] task=generate: {cfg.checkpoint} {NOT_TRAINED_TO_DRAW}. Train with text-to-image "
            "samples (e.g. data=laion with data.train.t2i_prob > 0).",
            flush=True,
        )
    sample = CaptionSample(image=None, caption=cfg.prompt, key="generate", task="t2i")
    inputs = processor([sample], generation=True, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    ids = model.generate(
        **inputs,
        max_new_tokens=processor.vocab.tokens_per_image - 1,  # the prompt already ends with boi
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature if cfg.temperature > 0 else None,
        generator=generator,
    )
    decoded = processor.decode(ids[:, 0])
    if not decoded.images:
        raise RuntimeError(f"task=generate: the model did not complete an image for {cfg.prompt!r}")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, picture in enumerate(processor.images_to_pil(decoded.images)):
        paths.append(run_dir / f"generated_{i}.png")
        picture.save(paths[-1])
    # trained_for_text_to_image: null when the checkpoint has no record of its training (the official one)
    record = {"prompt": cfg.prompt, "images": [str(p) for p in paths], "trained_for_text_to_image": trained}
    (run_dir / "generate.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(f"wrote {p}" for p in paths), flush=True)
    return paths
