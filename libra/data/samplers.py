"""Index samplers for the map-style readers (COCO, LLaVA, VQA): split over ranks with the same
number of indices on every rank, reshuffled per epoch from the seed, resumable mid-epoch.

Every rank walks the same seeded permutation, padded by repeating its head to a multiple of the
world size (as ``DistributedSampler`` does), so ranks can never disagree on the number of steps.
Resuming skips the ``drawn`` indices a ``ReaderState`` recorded for this rank.
``LengthGroupedSampler`` additionally orders each chunk of ``batch_size * megabatch`` indices by
length so that a batch holds conversations of similar length (less padding), LLaVA-style.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized

from torch.utils.data import Sampler

from .laion import distributed_rank_and_size


class ResumableSampler(Sampler[int]):
    """Seeded, rank-split, resumable index order over ``dataset``."""

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,  # True: drop the tail instead of repeating indices to even it out
    ):
        self.size = len(dataset)
        self.rank, self.world_size = distributed_rank_and_size(rank, world_size)
        if self.size < self.world_size:
            raise ValueError(f"{self.size} examples cannot be split over {self.world_size} ranks")
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self._resume_epoch, self._resume_drawn = 0, -1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_state_dict(self, state: dict) -> None:
        """Continue the epoch of a ``ReaderState.state_dict()`` after its ``drawn`` indices."""
        self.epoch = self._resume_epoch = int(state["epoch"])
        self._resume_drawn = int(state["drawn"])

    def __len__(self) -> int:
        per_rank = self.size // self.world_size
        return per_rank if self.drop_last or self.size % self.world_size == 0 else per_rank + 1

    def _global_order(self) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        total = len(self) * self.world_size
        return (order * 2)[:total]  # pads by the head (size >= world size, so one repeat suffices)

    def rank_order(self) -> list[int]:
        """This rank's indices for the current epoch, from the start."""
        return self._global_order()[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        order = self.rank_order()
        start = self._resume_drawn if self.epoch == self._resume_epoch else 0
        return iter(order[start:])


class LengthGroupedSampler(ResumableSampler):
    """``ResumableSampler`` whose batches hold examples of similar length (``dataset.lengths``)."""

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        megabatch: int = 16,  # batches per sorted chunk: larger = less padding, less randomness
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ):
        super().__init__(dataset, shuffle, seed, rank, world_size, drop_last)
        lengths = getattr(dataset, "lengths", None)
        if lengths is None or len(lengths) != self.size:
            raise ValueError(f"{type(dataset).__name__} has no per-example 'lengths'; use ResumableSampler")
        self.lengths, self.batch_size, self.megabatch = list(lengths), batch_size, megabatch

    def rank_order(self) -> list[int]:
        order = super().rank_order()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/groups")
        chunk = self.batch_size * self.megabatch
        grouped = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: -self.lengths[i])
            batches = [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
            if self.shuffle:
                # keep the (possibly short) last batch last, so every other batch stays full
                head = batches[:-1] if len(batches[-1]) < self.batch_size else batches
                rng.shuffle(head)
                batches = head + batches[len(head) :]
            grouped.extend(i for batch in batches for i in batch)
        return grouped
