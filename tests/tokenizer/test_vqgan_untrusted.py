"""The official vqgan.ckpt is read with the restricted unpickler: a crafted one runs nothing."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from libra.tokenizer.vision_tokenizer import VisionTokenizer

MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "vision_tokenizer_tiny" / "model"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_layout_loads_with_weights_only_and_a_crafted_ckpt_is_refused(tmp_path):
    assert VisionTokenizer.from_pretrained(MODEL_DIR).fingerprint()  # tensors only: loads as it is
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    state = torch.load(MODEL_DIR / "vqgan.ckpt", weights_only=True)["state_dict"]
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"state_dict": state, "callbacks": Payload(marker)}, folder / "vqgan.ckpt")
    with pytest.raises(RuntimeError, match="cannot be read safely") as error:
        VisionTokenizer.from_pretrained(folder)
    assert "refused to load" in str(error.value.__cause__)
    assert not marker.exists()


def test_a_damaged_ckpt_is_named_without_the_advice_to_convert_it(tmp_path):
    """Converting (weights_only=False) is the way for a trusted file the restricted unpickler refuses,
    not for one that was cut short: that one is reported as damaged."""
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    ckpt = folder / "vqgan.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{ckpt} is not a readable torch file") as error:
        VisionTokenizer.from_pretrained(folder)
    assert "convert_vqgan" not in str(error.value)
