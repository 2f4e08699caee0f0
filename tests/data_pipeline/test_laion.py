"""LAION webdataset shards: reading, cleaning, bad data, rank/worker splits, equal steps, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from libra.data.batching import ReaderCollator, ReaderState
from libra.data.laion import LaionShards
from libra.data.tar_samples import split_member_name
from libra.tokenizer.samples import CaptionSample

from .conftest import encode, laion_sample, write_shard

COLOURS = [(200, 30, 30), (30, 160, 60), (40, 70, 210), (230, 200, 40)]


def shape_image(index: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[index % len(COLOURS)])


def make_shards(folder: Path, counts: list[int]) -> str:
    """Shards ``0000{i}.tar`` with ``counts[i]`` synthetic samples each; keys say shard and position."""
    for shard, count in enumerate(counts):
        samples = [
            laion_sample(f"s{shard}k{i:03d}", shape_image(i), f"shard {shard} item {i}") for i in range(count)
        ]
        write_shard(folder / f"{shard:05d}.tar", samples)
    return str(folder / f"{{00000..{len(counts) - 1:05d}}}.tar")


def keys_of(items) -> list[str]:
    return [item.item.key for item in items]


def test_reads_real_photos_and_cleans_captions(tmp_path, photos):
    samples = [
        laion_sample("000000000", photos["astronaut"], "An  *astronaut*\tin   a ~white~ suit"),
        laion_sample("000000001", photos["chelsea"], "A #cat on the mat", via="json"),  # json-only caption
        laion_sample("000000002", photos["coffee"], "  Coffee " + "cup " * 70),  # > 64 words
    ]
    write_shard(tmp_path / "00000.tar", samples)
    reader = LaionShards(str(tmp_path / "{00000..00000}.tar"), shuffle=False)
    items = list(reader)
    assert [i.index for i in items] == [0, 1, 2]
    captions = [i.item.caption for i in items]
    assert captions[:2] == ["an astronaut in a white suit", "a cat on the mat"]
    assert captions[2].split() == ["coffee"] + ["cup"] * 63
    first = items[0].item
    assert isinstance(first, CaptionSample) and first.key == "00000.tar/000000000" and first.task == "i2t"
    assert first.image.size == photos["astronaut"].size and first.image.mode == "RGB"


def test_bad_data_is_skipped_counted_and_named(tmp_path, photos, caplog):
    truncated_jpeg = encode(photos["rocket"])[:600]
    good = [laion_sample(f"g{i}", shape_image(i), f"good {i}") for i in range(3)]
    bad = [
        {"__key__": "corrupt", "jpg": truncated_jpeg, "txt": "a rocket"},
        {"__key__": "nocaption", "jpg": encode(shape_image(0)), "json": b'{"width": 64}'},
        {"__key__": "latin1", "jpg": encode(shape_image(1)), "txt": "caf\xe9 au lait".encode("latin-1")},
        {"__key__": "badjson", "jpg": encode(shape_image(2)), "json": b"{not json"},
        {"__key__": "noimage", "txt": "text without picture"},
    ]
    write_shard(tmp_path / "00000.tar", good[:1] + bad + good[1:2])
    write_shard(tmp_path / "00001.tar", [laion_sample(f"t{i}", shape_image(i), f"cut {i}") for i in range(4)])
    data = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[: len(data) // 2])  # truncated tar: first samples survive
    write_shard(tmp_path / "00002.tar", good[2:])

    with caplog.at_level(logging.WARNING, logger="libra.data"):
        loader = DataLoader(
            LaionShards(str(tmp_path / "{00000..00002}.tar"), shuffle=False),
            batch_size=4,
            collate_fn=ReaderCollator(),
        )
        state = ReaderState()
        good_keys = []
        for batch in loader:
            state.update(batch)
            good_keys += [sample.key.split("/")[1] for sample in batch.inputs or []]
    # cut inside t2's image: t0 and t1 before it are complete and kept, only t2 is lost
    assert good_keys == ["g0", "g1", "t0", "t1", "g2"]
    assert dict(state.skipped) == {
        "corrupt_image": 1,
        "no_caption": 1,
        "bad_caption_encoding": 1,
        "bad_json": 1,
        "no_image": 1,
        "damaged_shard": 1,
    }
    assert state.metrics()["data/skipped/corrupt_image"] == 1
    text = caplog.text
    assert f"shard {tmp_path / '00000.tar'} key corrupt: corrupt_image" in text
    assert f"shard {tmp_path / '00000.tar'} key latin1: bad_caption_encoding" in text
    assert f"shard {tmp_path / '00001.tar'} at key t2: damaged_shard" in text


def test_ranks_and_workers_see_disjoint_samples_covering_all_shards(tmp_path):
    urls = make_shards(tmp_path, [3, 1, 4, 2, 5, 3, 2, 4])
    seen = {}
    for rank in range(2):
        reader = LaionShards(urls, rank=rank, world_size=2, shuffle_buffer=4, shuffle_initial=2, seed=7)
        loader = DataLoader(reader, batch_size=2, num_workers=2, collate_fn=ReaderCollator())
        for batch in loader:
            for (slot, _, _), sample in zip(batch.positions, batch.inputs):
                assert slot // 2 == rank  # slots are rank-major
                seen.setdefault(sample.key, []).append(slot)
    expected = {f"{s:05d}.tar/s{s}k{i:03d}" for s, n in enumerate([3, 1, 4, 2, 5, 3, 2, 4]) for i in range(n)}
    assert set(seen) == expected
    assert all(len(slots) == 1 for slots in seen.values())  # disjoint
    # finite split: slot s reads shards s, s + 4: shard 0 and 4 (3 + 5 samples) go to slot 0
    assert sorted(k for k, v in seen.items() if v == [0]) == sorted(
        [f"00000.tar/s0k{i:03d}" for i in range(3)] + [f"00004.tar/s4k{i:03d}" for i in range(5)]
    )


@pytest.mark.parametrize("resampled", [False, True])
def test_every_rank_gets_the_same_number_of_steps(tmp_path, resampled):
    urls = make_shards(tmp_path, [9, 1, 2, 6])  # very uneven shards
    steps = []
    for rank in range(2):
        reader = LaionShards(urls, resampled=resampled, samples_per_epoch=24, rank=rank, world_size=2, seed=3)
        loader = DataLoader(reader, batch_size=4, num_workers=2, collate_fn=ReaderCollator())
        batches = list(loader)
        steps.append(len(batches))
        assert sum(b.drawn for b in batches) == 12
    assert steps == [4, 4]  # 24 / 2 ranks / 2 workers = 6 per worker -> batches of 4 + 2, twice


def test_shuffle_is_seeded_per_epoch(tmp_path):
    urls = make_shards(tmp_path, [6, 6])
    reader = LaionShards(urls, shuffle_buffer=8, shuffle_initial=4, seed=1)
    first, again = keys_of(reader), keys_of(reader)
    reader.set_epoch(1)
    second = keys_of(reader)
    assert first == again and sorted(first) == sorted(second) and first != second
    assert first != sorted(first)  # shuffled at all


def test_restored_state_continues_exactly(tmp_path):
    urls = make_shards(tmp_path, [5, 4, 6, 3])

    def loader(reader):
        return DataLoader(reader, batch_size=2, num_workers=2, collate_fn=ReaderCollator())

    def per_slot(batches):
        out = {}
        for batch in batches:
            for (slot, _, index), sample in zip(batch.positions, batch.inputs):
                out.setdefault(slot, []).append((index, sample.key, sample.caption))
        return out

    settings = dict(resampled=True, samples_per_epoch=20, shuffle_buffer=6, shuffle_initial=3, seed=11)
    full = list(loader(LaionShards(urls, **settings)))

    reader, state = LaionShards(urls, **settings), ReaderState()
    for step, batch in enumerate(loader(reader)):
        state.update(batch)
        if step == 2:  # stop mid-epoch, after 3 batches (worker 0 gave 2, worker 1 gave 1)
            break
    saved = json.loads(json.dumps(state.state_dict()))  # as a checkpoint would store it
    assert saved["drawn_per_slot"] == {"0": 4, "1": 2}

    restored = LaionShards(urls, **settings)
    restored.load_state_dict(saved)
    rest = per_slot(loader(restored))
    expected = {slot: items[saved["drawn_per_slot"][str(slot)] :] for slot, items in per_slot(full).items()}
    assert rest == expected
    assert sum(len(v) for v in rest.values()) == 20 - 6
    again = ReaderState()
    again.load_state_dict(saved)
    assert again.state_dict() == state.state_dict()
    assert saved["num_slots"] == 2
    one_worker = LaionShards(urls, **settings)
    one_worker.load_state_dict(saved)
    with pytest.raises(ValueError, match="saved position is for 2 slots .* this run has 1"):
        next(iter(one_worker))


def test_extreme_shape_forces_image_to_text(tmp_path):
    samples = [
        laion_sample("wide", shape_image(0, (300, 40)), "a wide strip"),
        laion_sample("square", shape_image(1), "a square"),
    ]
    write_shard(tmp_path / "00000.tar", samples)
    tasks = {
        i.item.key: i.item.task for i in LaionShards(str(tmp_path / "00000.tar"), shuffle=False, t2i_prob=1.0)
    }
    assert tasks == {"00000.tar/wide": "i2t", "00000.tar/square": "t2i"}


def test_bad_settings_are_clear_errors(tmp_path):
    urls = make_shards(tmp_path, [2])
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shards do not exist \(first: .*00001.tar\)"):
        LaionShards(str(tmp_path / "{00000..00001}.tar"))
    with pytest.raises(ValueError, match="set samples_per_epoch"):
        LaionShards(urls, resampled=True)
    with pytest.raises(ValueError, match="without a shard"):
        list(LaionShards(urls, rank=1, world_size=2))


def test_member_names_split_like_webdataset():
    assert split_member_name("dir/000042.jpg") == ("dir/000042", "jpg")
    assert split_member_name("a.seg.PNG") == ("a", "seg.png")


def test_text_to_image_hides_the_clip_features_nine_times_in_ten(tmp_path):
    urls = make_shards(tmp_path, [100, 100, 100, 100])
    settings = dict(samples_per_epoch=400, t2i_prob=0.5, seed=4, shuffle_buffer=16, shuffle_initial=8)
    samples = [item.item for item in LaionShards(urls, **settings)]
    t2i = [s for s in samples if s.task == "t2i"]
    hidden = sum(s.hide_image_features for s in t2i)
    # binomial bounds at about four standard deviations: 200 +- 40 t2i, 90% +- 6% of them hidden
    assert 160 <= len(t2i) <= 240 and 0.84 <= hidden / len(t2i) <= 0.96
    assert not any(s.hide_image_features for s in samples if s.task == "i2t")

    # seeded per example: the same flags again, other ones with another seed
    def flags(reader):
        return [(i.item.key, i.item.task, i.item.hide_image_features) for i in reader]

    assert flags(LaionShards(urls, **settings)) == [(s.key, s.task, s.hide_image_features) for s in samples]
    assert flags(LaionShards(urls, **settings)) != flags(LaionShards(urls, **{**settings, "seed": 5}))
    shown = LaionShards(urls, **{**settings, "t2i_hide_features_prob": 0.0})
    assert not any(i.item.hide_image_features for i in shown)
    with pytest.raises(ValueError, match="t2i_hide_features_prob=1.5 is not a probability"):
        LaionShards(urls, t2i_hide_features_prob=1.5)
