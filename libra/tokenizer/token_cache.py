"""Token cache (docs/design.md P6): LFQ indices + CLIP features per image, computed once, read back.

The vision tokenizer is frozen, so an image's tokens are a pure function of (preprocessed pixels,
tokenizer weights, dtype). The key hashes the pixel tensor (it already reflects the image content and
the preprocessing settings) together with a namespace string holding the tokenizer fingerprint, the
preprocessing settings and the dtype. One small safetensors file per image, written to a temporary
name and renamed, so concurrent writers (several ranks) never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def image_cache_key(pixels: torch.Tensor, namespace: str) -> str:
    """sha256 of the namespace and the float32 pixel bytes (and shape)."""
    digest = hashlib.sha256(namespace.encode())
    digest.update(repr(tuple(pixels.shape)).encode())
    digest.update(pixels.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_namespace(fingerprint: str, preprocessing: dict, dtype: torch.dtype) -> str:
    """What besides the pixels decides the tokens: weights, preprocessing, dtype (docs/design.md B20)."""
    return f"{fingerprint}|{sorted(preprocessing.items())}|{dtype}"


class TokenCache:
    """A directory of ``<key[:2]>/<key>.safetensors`` files holding ``indices`` and ``features``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str):
        """The cached :class:`VisionTokens` for ``key``, or None."""
        from .vision_tokenizer import VisionTokens

        path = self._path(key)
        if not path.is_file():
            return None
        tensors = load_file(path)
        return VisionTokens(indices=tensors["indices"], features=tensors["features"])

    def save(self, key: str, indices: torch.Tensor, features: torch.Tensor) -> None:
        """Store one image's (g*g, K) indices and (g*g, F) features."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file({"indices": indices.cpu().contiguous(), "features": features.cpu().contiguous()}, tmp)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.safetensors"))
