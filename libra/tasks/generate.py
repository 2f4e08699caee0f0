"""`task=generate`: text to image with a checkpoint folder; the image tokens become PNGs.

    python run.py task=generate checkpoint=<folder> prompt="a red bus"
    python run.py task=generate checkpoint=<folder> prompt="a red bus" temperature=1.0 seed=3

The prompt is the caption followed by `<img_gen>` (the begin-of-image token, docs/design.md §1.3), as in the
text-to-image training samples; the model then writes exactly one image: grid x grid codes per
codebook and the end-of-image token. The pixel decoder of the vision tokenizer turns the codes into
`<run dir>/generated_0.png`. Greedy by default; `temperature` > 0 samples (seeded by `seed`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from libra.pretrained import default_device, load_pretrained
from libra.tokenizer.samples import CaptionSample


@torch.no_grad()
def generate(cfg: DictConfig) -> list[Path]:
    """Draw one image for `cfg.prompt`; returns the PNG paths written to the run dir."""
    device = default_device()
    model, processor = load_pretrained(cfg.checkpoint, device)
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
    record = {"prompt": cfg.prompt, "images": [str(p) for p in paths]}
    (run_dir / "generate.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(f"wrote {p}" for p in paths), flush=True)
    return paths
