"""LAION epochs continue through the shards: over a run every sample is read before any is read
again, on every rank and worker, and a resumed run reads exactly what the uninterrupted one did."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from libra.data.batching import ReaderCollator, ReaderState
from libra.data.laion import LaionShards

from .conftest import laion_sample, write_shard

SIZES = [5, 7, 6, 9, 4, 8, 6, 7]  # uneven shards, 52 samples
RANKS, WORKERS = 2, 2


def corpus(folder, sizes=SIZES, suffix: str = "tar") -> str:
    for shard, count in enumerate(sizes):
        image = Image.new("RGB", (8, 8), (30 * shard, 60, 90))
        samples = [laion_sample(f"s{shard}k{i}", image, f"shard {shard} item {i}") for i in range(count)]
        write_shard(folder / f"{shard:05d}.{suffix}", samples)
    return str(folder / f"{{00000..{len(sizes) - 1:05d}}}.{suffix}")


def train(urls: str, rank: int, epochs: int, settings: dict, state: ReaderState | None = None, stop=None):
    """The trainer's loop over a rank's loader: the reader state goes to the reader before every
    epoch. Returns [(slot, epoch, index, key, task, hidden)] and the state (at ``stop`` batches)."""
    reader = LaionShards(urls, rank=rank, world_size=RANKS, **settings)
    loader = DataLoader(reader, batch_size=2, num_workers=WORKERS, collate_fn=ReaderCollator())
    state = state or ReaderState()
    seen, consumed = [], 0
    while state.epoch < epochs:
        reader.load_state_dict(state.state_dict())
        for batch in loader:
            state.update(batch)
            for (slot, epoch, index), sample in zip(batch.positions, batch.inputs):
                seen.append((slot, epoch, index, sample.key, sample.task, sample.hide_image_features))
            consumed += 1
            if consumed == stop:
                return seen, state
        state.start_epoch(state.epoch + 1)
    return seen, state


def shares() -> dict[int, set[str]]:
    """The samples each slot owns: shards slot, slot + 4 (rank-major slots, 4 of them)."""
    slots = RANKS * WORKERS
    return {
        slot: {f"{s:05d}.tar/s{s}k{i}" for s in range(slot, len(SIZES), slots) for i in range(SIZES[s])}
        for slot in range(slots)
    }


def test_every_sample_is_read_before_any_is_read_again(tmp_path):
    urls = corpus(tmp_path)
    settings = dict(samples_per_epoch=20, shuffle_buffer=4, shuffle_initial=2, seed=5)  # 5 a slot an epoch
    epochs = 8  # 40 draws a slot: shares of 9..16 samples are read 2.5 to 4.4 times
    seen = [item for rank in range(RANKS) for item in train(urls, rank, epochs, settings)[0]]
    assert len(seen) == epochs * 20
    keys = {key for *_, key, _, _ in seen}
    assert keys == set().union(*shares().values())  # all 52 samples of the corpus
    for slot, share in shares().items():
        mine = [key for s, _, _, key, _, _ in sorted(seen) if s == slot]  # in the order handed out
        assert set(mine) == share
        # read pass by pass: after every epoch, no sample has been read twice more than another
        for epoch in range(1, epochs + 1):
            counts = Counter(mine[: epoch * 5])
            counts.update(dict.fromkeys(share, 0))  # the unread ones count too
            assert max(counts.values()) - min(counts.values()) <= 1, (slot, epoch)


def test_resume_across_epochs_continues_exactly(tmp_path):
    urls = corpus(tmp_path)
    settings = dict(samples_per_epoch=20, shuffle_buffer=4, shuffle_initial=2, seed=9, t2i_prob=0.5)
    full, _ = train(urls, 0, 5, settings)
    # stop inside epoch 2 (batches of 2 from workers in turn: 3 batches an epoch per worker)
    first, state = train(urls, 0, 5, settings, stop=2 * 6 + 3)
    saved = json.loads(json.dumps(state.state_dict()))  # as a checkpoint stores it
    assert saved["epoch"] == 2 and set(saved["stream_starts"]) == {"0", "1"}
    restored = ReaderState()
    restored.load_state_dict(saved)
    rest, _ = train(urls, 0, 5, settings, state=restored)
    assert sorted(first + rest) == sorted(full)
    assert {(s, e, i) for s, e, i, *_ in first}.isdisjoint({(s, e, i) for s, e, i, *_ in rest})
    tasks = Counter(task for *_, task, _ in full)
    assert tasks["t2i"] > 0 and tasks["i2t"] > 0  # the per-example draws are part of what must match


def test_compressed_shards_continue_by_counting(tmp_path):
    urls = corpus(tmp_path, [5, 3, 4, 6], suffix="tar.gz")
    reader = LaionShards(urls, samples_per_epoch=4, shuffle=False)
    state, keys = ReaderState(), []
    for _ in range(5):  # 20 draws over 18 samples: one full pass, then the second begins
        reader.load_state_dict(state.state_dict())
        for batch in DataLoader(reader, batch_size=4, collate_fn=ReaderCollator()):
            state.update(batch)
            keys += [sample.key for sample in batch.inputs]
        state.start_epoch(state.epoch + 1)
    assert len(set(keys[:18])) == 18 and keys[18:] == keys[:2]


def test_without_positions_an_epoch_starts_a_fresh_pass_and_says_so(tmp_path, caplog):
    urls = corpus(tmp_path, [6, 6])
    reader = LaionShards(urls, samples_per_epoch=4, shuffle=False)
    reader.set_epoch(1)
    with caplog.at_level(logging.WARNING, logger="libra.data"):
        keys = [item.item.key for item in reader]
    assert len(keys) == 4 and "no position for slot 0 at the start of epoch 1" in caplog.text


@pytest.mark.parametrize("resampled", [False, True])
def test_only_the_last_item_of_a_slot_epoch_carries_the_next_start(tmp_path, resampled):
    urls = corpus(tmp_path, [3, 4])
    items = list(LaionShards(urls, samples_per_epoch=5, resampled=resampled, seed=1))
    assert [item.next_start is not None for item in items] == [False] * 4 + [True]
