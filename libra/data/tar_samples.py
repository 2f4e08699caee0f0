"""Reading one webdataset shard: a tar whose consecutive members share a key (``000042.jpg``,
``000042.txt``, ``000042.json``), grouped into one dict per sample.

Written against the layout img2dataset produces rather than through webdataset's pipeline, so
the reader can stop, count and resume at exact sample boundaries: every sample carries the byte
offset at which the next one starts, and reading can start there again (uncompressed tars).

Damage is always reported, never taken for the end of the shard. Python's ``tarfile`` ends an
archive silently at a truncated, garbled or missing header; here only the zero block that ends a
tar counts as its end, anything else raises ``DamagedShard``. Every sample known to be complete
before the damage has been handed out by then: a sample is complete once the header of the next
key has been read, so it is yielded before that member's data is read. The sample being read when
the tar broke is dropped, since its remaining members may be lost.
"""

from __future__ import annotations

import logging
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

log = logging.getLogger("libra.data")


class TarSample(NamedTuple):
    """One sample of a shard. ``next_offset``: byte offset of the next sample's first header (None
    in a compressed tar, which cannot be entered in the middle); ``at_end``: the shard's last sample."""

    key: str
    members: dict[str, bytes]
    next_offset: int | None
    at_end: bool = False


class DamagedShard(Exception):
    """A shard could not be read to its end; ``last_key`` is the sample being read (or None)."""

    def __init__(self, shard: str, last_key: str | None, error: BaseException):
        super().__init__(f"shard {shard} unreadable after key {last_key}: {error}")
        self.shard, self.last_key, self.error = shard, last_key, error

    @property
    def missing(self) -> bool:
        """The file was not there (deleted or unmounted since the run started)."""
        return isinstance(self.error, FileNotFoundError)


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/000042.jpg`` -> (``dir/000042``, ``jpg``); the key ends at the first dot of the
    file name, as webdataset splits it (``a.seg.png`` has key ``a``, extension ``seg.png``)."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


def open_shard(path: str | Path, retries: int = 0, retry_delay: float = 1.0) -> BinaryIO:
    """Open a shard for reading, trying ``retries`` more times (waiting ``retry_delay`` seconds,
    doubled each time) when it cannot be opened: a network filesystem may lose a file for a moment.
    Raises ``DamagedShard`` when every try failed."""
    attempt = 0
    while True:
        try:
            return open(path, "rb")
        except OSError as error:
            if attempt == retries:
                raise DamagedShard(str(path), None, error) from error
            wait = retry_delay * 2**attempt
            log.warning(f"cannot open shard {path} ({error}); trying again in {wait:g} s")
            time.sleep(wait)
            attempt += 1


def iter_tar_samples(
    path: str | Path, start_offset: int = 0, retries: int = 0, retry_delay: float = 1.0
) -> Iterator[TarSample]:
    """Yield the samples of a shard in file order, from the sample starting at byte
    ``start_offset`` (a ``next_offset`` seen earlier; 0: from the start).

    A truncated, garbled or unreadable tar raises ``DamagedShard`` after every complete sample
    before the damage was yielded; the sample being read when it broke is dropped.
    """
    key, members = None, {}
    try:
        with open_shard(path, retries, retry_delay) as file:
            if start_offset:
                file.seek(start_offset)
            with tarfile.open(fileobj=file, mode="r|*", tarinfo=_WatchedTarInfo) as tar:
                seekable = getattr(tar.fileobj, "comptype", "tar") == "tar"
                if start_offset and not seekable:
                    raise ValueError(f"a compressed tar cannot be read from byte {start_offset}")
                for info in tar:
                    if not info.isfile():
                        continue
                    name_key, ext = split_member_name(info.name)
                    if name_key.startswith("__") or not ext:  # webdataset meta files, stray names
                        continue
                    if name_key != key:
                        if members:  # complete: hand it out before this member's data is read
                            yield TarSample(key, members, start_offset + info.offset if seekable else None)
                        key, members = name_key, {}
                    members[ext] = tar.extractfile(info).read()
                ending = getattr(tar, "header_error", None)
                if not isinstance(ending, tarfile.EOFHeaderError):
                    # tarfile stops silently here; a tar ends with a zero block, not like this
                    raise tarfile.ReadError(f"the tar ends at a bad header ({ending}): truncated or garbled")
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        raise DamagedShard(str(path), key, error) from error
    if members:
        yield TarSample(key, members, None, at_end=True)


class _WatchedTarInfo(tarfile.TarInfo):
    """Keeps, on the ``TarFile``, why its last header could not be read: ``tarfile`` ends an
    archive at any bad header without saying which, and only a zero block is a proper end."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as error:
            tar.header_error = error
            raise
