"""LAION-style webdataset shards (the img2dataset layout) as a stream of ``CaptionSample`` (spec §6.1).

Each sample is ``{key}.jpg|png|webp`` + ``{key}.txt`` + ``{key}.json``; the caption comes from the
``.txt`` member, else from the json's ``caption`` (the reference reads only the json). Captions are
cleaned as in spec §6.4; a shape outside the ratio band forces image-to-text as in the reference.

The stream is split over ``rank * num_workers + worker`` slots. Finite mode gives each slot a
disjoint share of the shard list; resampled mode draws shards with replacement, as the reference's
``ResampledShards``. ``samples_per_epoch`` is the epoch length over all ranks and workers: each
slot draws exactly ``samples_per_epoch // (ranks * workers)`` examples (webdataset's ``with_epoch``
counts per worker instead), so every rank runs the same number of steps however uneven the shards
are: without it one rank could finish early and hang the others in a collective.

Shards are local files (a network filesystem mount is fine). Workers are re-created each epoch
(do not use ``persistent_workers``: ``set_epoch`` would not reach them).

Exact resume: everything a slot draws is a pure function of (seed, epoch, slot), so the state is
just how many examples each slot had handed out (``ReaderState``). Restoring replays that many
raw examples through the shuffle buffer without decoding them: a cost in reading, bounded by one
epoch, in exchange for a state of a few integers and no buffer contents in the checkpoint.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls

from libra.tokenizer.captions import CaptionCleaner
from libra.tokenizer.samples import CaptionSample

from .images import IMAGE_EXTENSIONS, decode_image_bytes, preprocess, shape_acceptable
from .skips import Skipped, skip
from .tar_samples import DamagedShard, iter_tar_samples

# What the raw stream carries before decoding: (shard, key, {extension: bytes}), or a marker for
# a shard that broke (so damaged shards are counted like any other bad example).
RawSample = tuple[str, str, dict[str, bytes]]


@dataclass(frozen=True)
class StreamItem:
    """One drawn example and its place in the stream: ``index`` counts what ``slot`` drew in
    ``epoch`` before it. The collator passes the places on so the trainer can record them."""

    item: CaptionSample | Skipped
    slot: int
    epoch: int
    index: int
    num_slots: int = 1


def expand_shard_urls(urls: str | list[str]) -> list[str]:
    """Brace-expand ``"dir/{00000..00099}.tar"`` (``::`` joins several lists); a list passes through."""
    if isinstance(urls, str):
        return expand_urls(urls)
    return [str(url) for url in urls]


def distributed_rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win (tests simulate ranks that way); else torch.distributed; else one rank."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class LaionShards(IterableDataset):
    """Caption pairs from webdataset shards; yields ``StreamItem``s wrapping samples or skip markers."""

    def __init__(
        self,
        urls: str | list[str],
        image_transform: Callable[[Image.Image], Any] | None = None,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        shuffle: bool = True,
        shuffle_buffer: int = 5000,  # reference: 5000, filled to 1000 before the first draw
        shuffle_initial: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shape_ratio_threshold: float | None = 2.0,
        min_image_size: int = 0,
        max_words: int = 64,
        lowercase: bool = True,
        strip_html: bool = False,
        t2i_prob: float = 0.0,  # reference recipe: every sample image-to-text
        decode_draft_size: int | None = None,
    ):
        super().__init__()
        self.urls = expand_shard_urls(urls)
        if not self.urls:
            raise ValueError(
                f"LaionShards: no shards in urls={urls!r}; give a path like 'dir/{{00000..00009}}.tar'"
            )
        missing = [url for url in self.urls if not Path(url).is_file()]
        if missing:
            raise FileNotFoundError(
                f"LaionShards: {len(missing)} of {len(self.urls)} shards do not exist (first: {missing[0]}); "
                "check the shard pattern in the data config (local paths, brace ranges like {00000..00099})"
            )
        if resampled and samples_per_epoch is None:
            raise ValueError("LaionShards: resampled=True is an endless stream; set samples_per_epoch")
        self.image_transform = image_transform
        self.resampled, self.samples_per_epoch, self.shuffle = resampled, samples_per_epoch, shuffle
        self.shuffle_buffer, self.shuffle_initial = shuffle_buffer, min(shuffle_initial, shuffle_buffer)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shape_ratio_threshold, self.min_image_size = shape_ratio_threshold, min_image_size
        self.clean_caption = CaptionCleaner(max_words, lowercase, strip_html)
        self.t2i_prob, self.decode_draft_size = t2i_prob, decode_draft_size
        self.epoch = 0
        self._resume_epoch, self._resume_drawn, self._resume_slots = -1, {}, None

    # -- position ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Call before iterating each epoch (as with DistributedSampler): it reseeds the order."""
        self.epoch = epoch

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``ReaderState.state_dict()``: the next iteration of that epoch skips what
        each slot had already handed out. Needs the same shards, seed, ranks and workers."""
        self.epoch = self._resume_epoch = int(state["epoch"])
        self._resume_drawn = {int(slot): int(n) for slot, n in state["drawn_per_slot"].items()}
        self._resume_slots = state.get("num_slots")

    def slots(self) -> tuple[int, int]:
        """(this slot, number of slots) of the calling process: rank-major, worker-minor."""
        rank, world_size = distributed_rank_and_size(self.rank, self.world_size)
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        return rank * num_workers + worker_id, world_size * num_workers

    # -- the stream -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamItem]:
        slot, num_slots = self.slots()
        epoch = self.epoch
        order_rng = random.Random(f"{self.seed}/{epoch}/{slot}")
        quota = None if self.samples_per_epoch is None else self.samples_per_epoch // num_slots
        if quota == 0:
            raise ValueError(
                f"LaionShards: samples_per_epoch={self.samples_per_epoch} is less than one per slot "
                f"({num_slots} = ranks x workers); raise it"
            )
        already_drawn = 0
        if epoch == self._resume_epoch:
            if self._resume_slots not in (None, num_slots):
                raise ValueError(
                    f"LaionShards: the saved position is for {self._resume_slots} slots (ranks x workers), "
                    f"this run has {num_slots}; resume with the same number of ranks and DataLoader workers"
                )
            already_drawn = self._resume_drawn.get(slot, 0)
        raw = self._raw_stream(slot, num_slots, order_rng, endless=quota is not None)
        if self.shuffle and self.shuffle_buffer > 1:
            raw = _shuffled(raw, self.shuffle_buffer, self.shuffle_initial, order_rng)
        for index, entry in enumerate(raw):
            if quota is not None and index >= quota:
                return
            if index < already_drawn:  # replayed for exact resume, never decoded
                continue
            item = entry if isinstance(entry, Skipped) else self._decode(entry, epoch, slot, index)
            yield StreamItem(item, slot, epoch, index, num_slots)

    def _raw_stream(
        self, slot: int, num_slots: int, rng: random.Random, endless: bool
    ) -> Iterator[RawSample | Skipped]:
        """Undecoded examples in shard order: this slot's shards once, or cycled / resampled until
        the caller's quota is met."""
        if self.resampled:
            shard_passes = ([rng.choice(self.urls)] for _ in itertools.count())
        else:
            mine = self.urls[slot::num_slots]
            if not mine:
                raise ValueError(
                    f"LaionShards: {len(self.urls)} shards for {num_slots} slots (ranks x workers) leaves "
                    f"slot {slot} without a shard; use fewer workers, more shards or resampled=True"
                )
            shard_passes = _passes(mine, rng if self.shuffle else None, endless)
        barren = 0  # consecutive passes that produced nothing: stops an endless loop over bad shards
        for shards in shard_passes:
            produced = False
            for shard in shards:
                try:
                    for key, members in iter_tar_samples(shard):
                        produced = True
                        yield shard, key, members
                except DamagedShard as damage:
                    produced = True
                    where = f"shard {shard} at key {damage.last_key}"  # broken while reading it
                    yield skip("damaged_shard", where, str(damage.error))
            barren = 0 if produced else barren + 1
            if barren > (len(self.urls) if self.resampled else 1):
                raise RuntimeError(f"LaionShards: slot {slot} found no samples at all in its shards {shards}")

    def _decode(self, raw: RawSample, epoch: int, slot: int, index: int) -> CaptionSample | Skipped:
        shard, key, members = raw
        where = f"shard {shard} key {key}"
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
        if image_ext is None:
            return skip("no_image", where, f"members {sorted(members)}")
        caption = _read_caption(members, where)
        if isinstance(caption, Skipped):
            return caption
        caption = self.clean_caption(caption)
        if not caption:
            return skip("empty_caption", where)
        try:
            image = decode_image_bytes(members[image_ext], self.decode_draft_size)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return skip("corrupt_image", where, str(error))
        try:
            # draft decoding shrinks both sides by the same power of two, so the ratio holds
            acceptable = shape_acceptable(*image.size, self.shape_ratio_threshold, self.min_image_size)
        except ValueError as error:
            return skip("bad_shape", where, str(error))
        task = "i2t"
        if self.t2i_prob > 0 and acceptable:
            # one generator per example, so a resumed stream draws the same tasks without replaying
            draw = random.Random(f"{self.seed}/{epoch}/{slot}/{index}").random()
            task = "t2i" if draw < self.t2i_prob else "i2t"
        pixels = preprocess(self.image_transform, image, where)
        if isinstance(pixels, Skipped):
            return pixels
        return CaptionSample(pixels, caption, key=f"{Path(shard).name}/{key}", task=task)


def _read_caption(members: dict[str, bytes], where: str) -> str | Skipped:
    """The ``.txt`` caption, else the json's ``caption`` field."""
    if "txt" in members:
        try:
            return members["txt"].decode("utf-8")
        except UnicodeDecodeError as error:
            return skip("bad_caption_encoding", where, str(error))
    if "json" in members:
        try:
            caption = json.loads(members["json"]).get("caption")
        except (ValueError, AttributeError) as error:
            return skip("bad_json", where, str(error))
        if isinstance(caption, str):
            return caption
    return skip("no_caption", where)


def _passes(shards: list[str], rng: random.Random | None, endless: bool) -> Iterator[list[str]]:
    """The slot's shard list once, or again and again; reshuffled each pass when ``rng`` is given."""
    while True:
        order = list(shards)
        if rng is not None:
            rng.shuffle(order)
        yield order
        if not endless:
            return


def _shuffled(items: Iterator, size: int, initial: int, rng: random.Random) -> Iterator:
    """webdataset-style shuffle buffer: nothing comes out until ``initial`` items are in; then it
    takes two items per one given out until it holds ``size``, then one for one."""
    buffer = []
    for count, item in enumerate(items):
        buffer.append(item)
        if len(buffer) < initial or (len(buffer) < size and count % 2 == 0):
            continue
        yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list, rng: random.Random):
    position = rng.randrange(len(buffer))
    buffer[position], buffer[-1] = buffer[-1], buffer[position]
    return buffer.pop()
