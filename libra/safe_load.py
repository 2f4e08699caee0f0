"""Read torch pickles from folders we do not control without running code from them.

A ``.pt`` file is a pickle, and ``torch.load(weights_only=False)`` calls whatever the pickle names:
a crafted checkpoint file runs its payload on load. Every ``.pt`` the toolkit reads from a checkpoint
folder goes through ``safe_torch_load``: torch's restricted unpickler (``weights_only=True``), which
builds tensors, containers and plain values and refuses every other global, plus an explicit
allow-list for the few plain-data classes a format needs (DeepSpeed's optimizer files name three,
see ``libra.train.checkpoint.deepspeed_safe_globals``).

DeepSpeed reads its own files with ``torch.load(weights_only=False)`` (``engine.load_checkpoint``,
``zero_to_fp32``). ``safe_unpickling()`` routes every ``torch.load`` of the process through
``safe_torch_load`` for the length of a ``with`` block, so those calls are restricted too: one read
of each file, no fork of DeepSpeed, and whatever file DeepSpeed decides to open is covered.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.serialization

_TORCH_LOAD = torch.load  # the real loader, kept before safe_unpickling() swaps the attribute


class UnsafePickleError(pickle.UnpicklingError):
    """A file that names a callable outside the allow-list: it was not loaded."""


class DamagedFileError(ValueError):
    """A file that is not a readable torch archive (cut short, overwritten): it was not loaded."""


def safe_torch_load(
    path: str | Path, map_location: Any = "cpu", allow: Sequence[Any] = (), mmap: bool | None = None
) -> Any:
    """``torch.load(path, weights_only=True)`` with the classes in `allow` also permitted.

    Raises ``UnsafePickleError`` naming the file and the refused global; nothing from the file runs.
    Raises ``DamagedFileError`` naming a file torch cannot read: torch's own errors for those
    ("PytorchStreamReader failed reading zip archive", "[Errno 22] Invalid argument", a bare
    EOFError) name no file, and inside DeepSpeed's loader nothing else would say which one it was.
    """
    try:
        with torch.serialization.safe_globals(list(allow)):
            return _TORCH_LOAD(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not _looks_like_a_torch_file(path):
            raise _damaged(path, f"{type(err).__name__}: neither a zip archive nor a pickle") from err
        found = re.search(r"(?:Unsupported global|Unsupported operand|GLOBAL)[^\n]*", str(err))
        detail = found.group(0) if found else str(err).splitlines()[0]
        raise UnsafePickleError(
            f"refused to load {path}: it asks the unpickler for something other than tensors and plain "
            f"data ({detail}). libra never runs code from checkpoint files; if you wrote this file "
            "yourself with another library version, convert it to safetensors in a process you trust."
        ) from err
    except FileNotFoundError:
        raise
    except (RuntimeError, OSError, EOFError) as err:
        detail = str(err).splitlines()[0] if str(err) else "the file ends early"
        raise _damaged(path, f"{type(err).__name__}: {detail}") from err


def _looks_like_a_torch_file(path: Any) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle of protocol 2 or later (the legacy format):
    random bytes are neither, and the unpickler's refusal of them is damage, not an attack."""
    if not isinstance(path, (str, Path)):
        return True  # a file object: cannot be reread here, let the unpickler's verdict stand
    with open(path, "rb") as file:
        head = file.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _damaged(path: Any, detail: str) -> DamagedFileError:
    return DamagedFileError(
        f"{path} is not a readable torch file ({detail}); it was cut short or overwritten after it was "
        "saved: use another checkpoint or copy the file again"
    )


@contextmanager
def safe_unpickling(allow: Sequence[Any] = ()) -> Iterator[None]:
    """Within the block every ``torch.load`` (DeepSpeed's included) is ``safe_torch_load``."""

    def restricted_load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **_):
        # pickle_module / weights_only=False of the caller are ignored on purpose
        return safe_torch_load(f, map_location=map_location, allow=allow, mmap=mmap)

    previous = torch.load, torch.serialization.load
    torch.load = torch.serialization.load = restricted_load
    try:
        yield
    finally:
        torch.load, torch.serialization.load = previous
