"""Annotation files: strict loading with errors that name the file, and a fork-friendly store.

A list of hundreds of thousands of small dicts in a Dataset is touched by every DataLoader worker;
reference counting then copies the pages into each worker (the memory growth that LLaVA-style
"lazy" datasets are known for). ``PackedRecords`` keeps the records as one bytes buffer and
decodes an entry only when it is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_annotation_json(path: str | Path, what: str) -> Any:
    """Parse a json file; a missing or unparsable file is a configuration error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; check the path in the data config")
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{what} file {path} is not valid json ({error}); regenerate or fix the file"
        ) from error


class PackedRecords:
    """A read-only list of json-serialisable records, stored encoded in one numpy byte buffer."""

    def __init__(self, records: list[Any]):
        blobs = [json.dumps(record, ensure_ascii=False).encode("utf-8") for record in records]
        self._offsets = np.cumsum([0] + [len(blob) for blob in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> Any:
        start, end = self._offsets[index], self._offsets[index + 1]
        return json.loads(self._buffer[start:end].tobytes())
