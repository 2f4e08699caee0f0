"""Reading one webdataset shard: a tar whose consecutive members share a key (``000042.jpg``,
``000042.txt``, ``000042.json``), grouped into one dict per sample.

Written against the layout img2dataset produces rather than through webdataset's pipeline, so
the reader can stop, count and resume at exact sample boundaries. A truncated or unreadable tar
ends its shard with a warning; the samples read before the damage are kept.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/000042.jpg`` -> (``dir/000042``, ``jpg``); the key ends at the first dot of the
    file name, as webdataset splits it (``a.seg.png`` has key ``a``, extension ``seg.png``)."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` per sample in file order.

    A truncated or unreadable tar raises ``DamagedShard`` after the complete samples before the
    damage were yielded; the sample being read when it broke is dropped.
    """
    key, members = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name_key, ext = split_member_name(info.name)
                if name_key.startswith("__") or not ext:  # webdataset meta files, stray names
                    continue
                data = tar.extractfile(info).read()
                if name_key != key:
                    if members:
                        yield key, members
                    key, members = name_key, {}
                members[ext] = data
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DamagedShard(str(path), key, error) from error
    if members:
        yield key, members


class DamagedShard(Exception):
    """A shard could not be read to its end; ``last_key`` is the sample being read (or None)."""

    def __init__(self, shard: str, last_key: str | None, error: BaseException):
        super().__init__(f"shard {shard} unreadable after key {last_key}: {error}")
        self.shard, self.last_key, self.error = shard, last_key, error
