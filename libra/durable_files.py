"""Files and folders that a crash leaves either old or new, never half written.

Checkpoints, exports and the metrics file are written the same way: beside their final name,
flushed to disk (fsync), and then renamed into place. A folder carries a manifest (every file with
its size) written last, so a reader can tell a complete folder from one a kill interrupted even
when the rename itself was never reached or the filesystem lost the last writes.

Replacing a folder (the same checkpoint step saved twice, the export of a resumed run) renames the
old one aside first, then the new one in, then deletes the old: at every moment one of the two
names holds a complete copy. Readers that look for ``<name>`` fall back to ``<name>.old``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"  # being written; never trusted
OLD_SUFFIX = ".old"  # a complete copy being replaced; trusted only while <name> is missing


def fsync_file(path: str | Path) -> None:
    """Flush one file's data to disk (a read-only descriptor is enough on Linux)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make the names in a folder (files created, renamed, removed) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # some filesystems do not let a folder be opened; nothing more we can do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under `folder` (each rank flushes what it wrote)."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fsync_file(path)
    for path in sorted(p for p in folder.rglob("*") if p.is_dir()):
        fsync_dir(path)
    fsync_dir(folder)


def write_manifest(folder: str | Path, **info) -> Path:
    """Record every file under `folder` with its size, last; `info` is stored beside the list."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    path = folder / MANIFEST
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps({**info, "files": files}, indent=1, sort_keys=True) + "\n")
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(folder)
    return path


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete folder; raises ``IncompleteFolder`` saying what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise IncompleteFolder(f"{folder}: no {MANIFEST} (its save was interrupted before the end)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise IncompleteFolder(f"{path} is unreadable ({err})") from err
    for name, size in files.items():
        file = folder / name
        if not file.is_file():
            raise IncompleteFolder(f"{folder}: {name} is missing (the manifest lists it)")
        if file.stat().st_size != size:
            raise IncompleteFolder(
                f"{folder}: {name} has {file.stat().st_size} bytes, the manifest says {size} (cut short)"
            )
    return manifest


class IncompleteFolder(Exception):
    """A folder whose manifest is missing or does not match its files."""


def replace_folder(new: str | Path, final: str | Path) -> Path:
    """Move the complete folder `new` to `final`; an existing `final` is kept (as `final.old`) until
    the new one is in place, then deleted."""
    new, final = Path(new), Path(final)
    old = final.with_name(final.name + OLD_SUFFIX)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # left by a crash after an earlier swap
        final.rename(old)
    new.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a file's content in one step: readers see the old text or the new, never a mix (also
    when several processes write it at once: each writes its own temporary file)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def build_folder_once(folder: str | Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``build(tmp)`` into a temporary sibling, then rename it to ``folder``, unless ``folder/marker``
    exists already. Processes that race (ranks filling one cache) each build apart; the first rename
    wins and the others find the marker and drop their copy."""
    folder = Path(folder)
    if (folder / marker).is_file():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not (folder / marker).is_file():  # not just another process finishing first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
