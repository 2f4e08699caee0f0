"""Map-style samplers: equal steps on every rank, disjoint cover, exact resume."""

from __future__ import annotations

import pytest

from libra.data.samplers import ResumableSampler


class Sized:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_ranks_get_equal_counts_and_cover_everything():
    orders = [list(ResumableSampler(Sized(10), seed=3, rank=r, world_size=4)) for r in range(4)]
    assert [len(o) for o in orders] == [3, 3, 3, 3]  # 10 padded to 12 by repeating the head
    flat = [i for o in orders for i in o]
    assert sorted(set(flat)) == list(range(10)) and len(flat) == 12
    dropped = [
        list(ResumableSampler(Sized(10), seed=3, rank=r, world_size=4, drop_last=True)) for r in range(4)
    ]
    assert [len(o) for o in dropped] == [2, 2, 2, 2] and len({i for o in dropped for i in o}) == 8


def test_epochs_reshuffle_and_resume_continues_exactly():
    sampler = ResumableSampler(Sized(20), seed=5, rank=1, world_size=2)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) != full
    resumed = ResumableSampler(Sized(20), seed=5, rank=1, world_size=2)
    resumed.load_state_dict({"epoch": 2, "drawn": 7, "drawn_per_slot": {}, "skipped": {}})
    assert list(resumed) == full[7:]
    resumed.set_epoch(3)  # the next epoch starts from its beginning
    assert len(list(resumed)) == 10


def test_too_few_examples_for_the_ranks_is_an_error():
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        ResumableSampler(Sized(3), rank=0, world_size=4)
