"""Damaged data never ends a run silently: broken tars, shards that vanish, decompression bombs.

Each fault is injected into real shards; the reader must hand out every complete sample before
the damage, count the fault under data/skipped/<reason>, name it in the log, and go on."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from libra.data import tar_samples
from libra.data.batching import ReaderCollator, ReaderState
from libra.data.coco_karpathy import KarpathyCaptions
from libra.data.images import ImageTooLarge, decode_image_bytes
from libra.data.laion import LaionShards
from libra.data.tar_samples import DamagedShard, iter_tar_samples

from .conftest import encode, laion_sample, write_shard


def small(index: int, size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), (40 * index % 256, 90, 160))


def shard_of(path, keys: list[str]):
    return write_shard(path, [laion_sample(key, small(i), f"caption {key}") for i, key in enumerate(keys)])


def member_offsets(path, data: bool = False) -> dict[str, int]:
    """Byte offset of every member's (first) header, or of its data, by member name."""
    with tarfile.open(path) as tar:
        return {info.name: info.offset_data if data else info.offset for info in tar}


def read_all(urls, **settings) -> tuple[list[str], ReaderState]:
    """Every good key and the reader state, as the trainer would see them."""
    state = ReaderState()
    reader = LaionShards(urls, shuffle=False, **settings)
    loader = DataLoader(reader, batch_size=3, collate_fn=ReaderCollator())
    keys = []
    for batch in loader:
        state.update(batch)
        keys += [sample.key.split("/")[1] for sample in batch.inputs or []]
    return keys, state


def damage(path, how: str) -> None:
    """Cut or garble ``path`` at the header of the second sample's json member (key k1)."""
    data = bytearray(path.read_bytes())
    at = member_offsets(path)["k1.json"]
    if how == "cut_in_header":
        data = data[: at + 100]
    elif how == "garbled_header":
        data[at : at + 512] = bytes(range(256)) * 2
    elif how == "cut_at_member_boundary":  # no end-of-archive blocks: tarfile would just stop
        data = data[:at]
    elif how == "cut_in_data":  # inside the image of k2: k0 and k1 are complete
        data = data[: member_offsets(path, data=True)["k2.jpg"] + 10]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "kept", "lost_key"),
    [
        ("cut_in_header", ["k0"], "k1"),
        ("garbled_header", ["k0"], "k1"),
        ("cut_at_member_boundary", ["k0"], "k1"),
        ("cut_in_data", ["k0", "k1"], "k2"),
    ],
)
def test_a_damaged_tar_is_counted_after_its_complete_samples(tmp_path, caplog, how, kept, lost_key):
    shard_of(tmp_path / "00000.tar", ["a0", "a1"])
    shard_of(tmp_path / "00001.tar", ["k0", "k1", "k2", "k3"])
    shard_of(tmp_path / "00002.tar", ["b0", "b1"])
    damage(tmp_path / "00001.tar", how)
    with caplog.at_level(logging.WARNING, logger="libra.data"):
        keys, state = read_all(str(tmp_path / "{00000..00002}.tar"))
    assert keys == ["a0", "a1", *kept, "b0", "b1"]  # the rest of the data goes on
    assert dict(state.skipped) == {"damaged_shard": 1}
    assert state.metrics()["data/skipped/damaged_shard"] == 1
    assert f"shard {tmp_path / '00001.tar'} at key {lost_key}: damaged_shard" in caplog.text


def test_an_intact_tar_reads_to_its_end_and_offsets_reenter_it(tmp_path):
    path = shard_of(tmp_path / "00000.tar", ["k0", "k1", "k2"])
    samples = list(iter_tar_samples(path))
    assert [s.key for s in samples] == ["k0", "k1", "k2"]
    assert sorted(samples[0].members) == ["jpg", "json", "txt"]
    assert [s.at_end for s in samples] == [False, False, True]
    offsets = member_offsets(path)
    assert samples[0].next_offset == offsets["k1.jpg"] and samples[1].next_offset == offsets["k2.jpg"]
    assert [s.key for s in iter_tar_samples(path, samples[0].next_offset)] == ["k1", "k2"]


def test_a_vanished_shard_is_retried_then_skipped_and_counted(tmp_path, caplog, monkeypatch):
    for shard in range(3):
        shard_of(tmp_path / f"{shard:05d}.tar", [f"s{shard}k{i}" for i in range(2)])
    urls = str(tmp_path / "{00000..00002}.tar")
    reader = LaionShards(urls, shuffle=False, shard_retries=2, shard_retry_delay=0.5)  # all exist now
    (tmp_path / "00001.tar").unlink()  # ... and one disappears mid-run
    waits = []
    monkeypatch.setattr(tar_samples.time, "sleep", waits.append)
    state = ReaderState()
    with caplog.at_level(logging.WARNING, logger="libra.data"):
        keys = []
        for batch in DataLoader(reader, batch_size=2, collate_fn=ReaderCollator()):
            state.update(batch)
            keys += [s.key.split("/")[1] for s in batch.inputs or []]
    assert keys == ["s0k0", "s0k1", "s2k0", "s2k1"]
    assert waits == [0.5, 1.0]  # two retries, the delay doubling
    assert dict(state.skipped) == {"missing_shard": 1}
    assert f"skipping shard {tmp_path / '00001.tar'}: missing_shard" in caplog.text


def test_a_shard_back_within_the_retries_is_read(tmp_path, monkeypatch):
    path = shard_of(tmp_path / "00000.tar", ["k0", "k1"])
    hidden = path.with_suffix(".away")
    path.rename(hidden)
    monkeypatch.setattr(tar_samples.time, "sleep", lambda seconds: hidden.rename(path))  # the mount is back
    assert [s.key for s in iter_tar_samples(path, retries=1)] == ["k0", "k1"]
    with pytest.raises(DamagedShard) as error:
        list(iter_tar_samples(tmp_path / "never.tar", retries=0))
    assert error.value.missing


def bomb_png(side: int = 10000) -> bytes:
    """A 10000 x 10000 PNG: ~100 kB on disk, 300 MB of RGB once decoded."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_above_the_pixel_limit_is_skipped_before_decoding(tmp_path, recwarn):
    bomb = bomb_png()
    # the same header with its pixel data cut off: a decode would fail as corrupt, the header
    # check refuses it as too large first
    headers_only = bomb[:200]
    samples = [
        laion_sample("g0", small(0), "fine"),
        {"__key__": "bomb", "png": bomb, "txt": "huge"},
        {"__key__": "claims", "png": headers_only, "txt": "huge header"},
        laion_sample("g1", small(1), "fine too"),
    ]
    write_shard(tmp_path / "00000.tar", samples)
    keys, state = read_all(str(tmp_path / "00000.tar"))
    assert keys == ["g0", "g1"]
    assert dict(state.skipped) == {"image_too_large": 2}
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    # configurable: a tighter limit skips the small images too; None turns our limit off
    keys, state = read_all(str(tmp_path / "00000.tar"), max_image_pixels=63)
    assert keys == [] and dict(state.skipped) == {"image_too_large": 4}
    with pytest.raises(ImageTooLarge, match="100000000 pixels, above max_image_pixels=67108864"):
        decode_image_bytes(bomb)
    assert decode_image_bytes(encode(small(0)), max_pixels=None).size == (8, 8)


def test_map_style_readers_apply_the_pixel_limit(tmp_path):
    (tmp_path / "images").mkdir()
    small(0, size=16).save(tmp_path / "images" / "a.png")
    entries = [{"image": "images/a.png", "caption": "a square", "image_id": 1}]
    (tmp_path / "karpathy.json").write_text(json.dumps(entries))
    default = KarpathyCaptions(str(tmp_path / "karpathy.json"), str(tmp_path))
    assert default[0].caption == "a square"
    tight = KarpathyCaptions(str(tmp_path / "karpathy.json"), str(tmp_path), max_image_pixels=255)
    assert tight[0].reason == "image_too_large"
