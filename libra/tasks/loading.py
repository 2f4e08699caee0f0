"""Load the model and processor of a checkpoint folder (the official layout, or our export) for inference."""

from __future__ import annotations

from pathlib import Path

import torch

from libra.model import LibraForCausalLM
from libra.tokenizer.processor import LibraProcessor


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pretrained(folder: str | Path, device: torch.device) -> tuple[LibraForCausalLM, LibraProcessor]:
    """Model in bf16 on a GPU (as the official demo) and fp32 on the CPU; the vision tokenizer in fp32
    everywhere, so image codes do not depend on the device (spec B20)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LibraForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    processor = LibraProcessor.from_pretrained(folder).to(device)
    return model, processor
