"""One-time conversion of an official ``vqgan.ckpt`` that ``torch.load(weights_only=True)`` refuses.

    python -m libra.tokenizer.convert_vqgan <checkpoint folder>

Unpickles the file with ``weights_only=False`` — only do this for a file you trust — and writes
``vision_tokenizer.safetensors`` (non-CLIP weights) plus the CLIP weights into the CLIP folder, then
points ``vision_tokenizer_config.yaml`` at the new file. The original ``vqgan.ckpt`` is left alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .image_processing import ImagePreprocessor
from .vision_tokenizer import CONFIG_NAME, VisionTokenizer, VisionTokenizerConfig


def convert(folder: str | Path) -> None:
    folder = Path(folder)
    config = VisionTokenizerConfig.from_yaml(folder / CONFIG_NAME)
    blob = torch.load(folder / config.ckpt_path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob)
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    from transformers import CLIPVisionConfig

    model = VisionTokenizer(config, CLIPVisionConfig.from_pretrained(folder / config.encoder_name))
    model.load_official_state_dict(state)
    clip_dir = folder / config.encoder_name
    keep = (
        ImagePreprocessor.from_clip_folder(clip_dir)
        if (clip_dir / "preprocessor_config.json").is_file()
        else None
    )
    model.save_pretrained(folder, keep)


def convert_vqgan_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="checkpoint folder holding vision_tokenizer_config.yaml")
    convert(parser.parse_args().folder)


if __name__ == "__main__":
    convert_vqgan_cli()
