"""Read W&B offline run files (``wandb/offline-run-*/run-*.wandb``) without a server.

The file is W&B's append-only record log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then
32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: full/first/middle/last);
joined chunks are serialized ``wandb_internal_pb2.Record`` protobufs. wandb no longer ships a
Python reader, so the tests carry this small one.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, parts = 7, []
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block tail too short for a header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if kind == 0:  # padding to the end of the block
            pos += left
            continue
        parts.append(data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length])
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


@dataclass
class OfflineArtifact:
    name: str
    type: str
    aliases: list[str]
    metadata: dict
    files: dict[str, dict]  # path in the artifact -> {"size", "ref" (file:// URI or "")}


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one dict per logged step
    summary: dict = field(default_factory=dict)  # the summary updates, merged in order
    artifacts: list[OfflineArtifact] = field(default_factory=list)
    console: str = ""  # captured stdout + stderr
    stats_records: int = 0  # system-metrics samples
    exit_code: int | None = None


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.job_type = record.run.run_id, record.run.run_group, record.run.job_type
            run.name = record.run.display_name
            run.tags = list(record.run.tags)
            for item in record.run.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            a = record.artifact
            files = {c.path: {"size": c.size, "ref": c.ref} for c in a.manifest.contents}
            meta = json.loads(a.metadata) if a.metadata else {}
            run.artifacts.append(OfflineArtifact(a.name, a.type, list(a.aliases), meta, files))
        elif kind == "output_raw":
            run.console += record.output_raw.line
        elif kind == "stats":
            run.stats_records += 1
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(root: Path, timeout_s: float = 30.0) -> list[OfflineRun]:
    """Every offline W&B run found under ``root`` (recursively), ordered by path.

    ``run.finish()`` can return before W&B's service process has written the last records, so a
    run is read again until its exit record is there (or ``timeout_s`` passes).
    """
    runs = []
    for path in sorted(Path(root).rglob("offline-run-*/run-*.wandb")):
        deadline = time.monotonic() + timeout_s
        run = read_run(path)
        while run.exit_code is None and time.monotonic() < deadline:
            time.sleep(0.2)
            run = read_run(path)
        runs.append(run)
    return runs
