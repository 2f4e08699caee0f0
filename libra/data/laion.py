"""LAION-style webdataset shards (img2dataset layout) as a ``CaptionSample`` stream (docs/design.md §6.1).

Each sample is ``{key}.jpg|png|webp`` + ``{key}.txt`` + ``{key}.json``; the caption comes from the
``.txt`` member, else from the json's ``caption`` (the reference reads only the json). Captions are
cleaned as in docs/design.md §6.4; a shape outside the ratio band forces image-to-text as in the reference.

The stream is split over ``rank * num_workers + worker`` slots, and each slot owns the shards
``urls[slot::slots]``. By default (coverage) a slot reads its shards pass after pass, every pass
in a new seeded order, and each epoch goes on where the last one stopped: over a run, a slot
reads every one of its shards before it reads any of them again, so the corpus is read pass by
pass (slots own disjoint shares; they drift apart only by the difference in their shares' sizes).
``resampled=True`` draws each next shard at random, with replacement, from all the shards, as the
reference's ``ResampledShards``: over as many draws as there are shards, that reads only about
63% of them (1 - 1/e).

``samples_per_epoch`` is the epoch length over all ranks and workers: each slot hands out exactly
``samples_per_epoch // (ranks * workers)`` examples an epoch (webdataset's ``with_epoch`` counts
per worker instead), so every rank runs the same number of steps however uneven the shards are;
without it one rank could finish early and hang the others in a collective. Without it (and not
resampled) an epoch is one pass over each slot's shards, of whatever length. The shuffle buffer
mixes the examples of one epoch and is emptied at its end, so everything read in an epoch is
handed out in that epoch: nothing is lost at the boundary.

Shards are local files (a network filesystem mount is fine); a shard that cannot be opened is
tried again a few times, then skipped and counted (``missing_shard``), and a damaged one is
counted (``damaged_shard``) after its complete samples. Workers are re-created each epoch (do not
use ``persistent_workers``): they learn where to start from ``load_state_dict``.

Position: where a slot's epoch starts is a ``StreamCursor`` (which shard of the slot's sequence,
how many of its samples were read, the byte offset of the next one). The last example a slot hands
out in an epoch carries the cursor after it; ``ReaderState`` keeps those and gives them back
through ``load_state_dict`` before the next epoch (the trainer does that before every epoch).
Exact resume: given the epoch's start cursors, everything a slot draws is a pure function of
(seed, epoch, slot), so the state is the cursors plus how many examples each slot had handed out
(``ReaderState``). Restoring replays that many raw examples through the shuffle buffer without
decoding them: a cost in reading, bounded by one epoch, for a state of a few integers.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls

from libra.tokenizer.captions import CaptionCleaner
from libra.tokenizer.samples import CaptionSample

from .images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_ERRORS,
    IMAGE_EXTENSIONS,
    decode_image_bytes,
    image_fault,
    preprocess,
    shape_acceptable,
)
from .skips import Skipped, skip
from .tar_samples import DamagedShard, iter_tar_samples

log = logging.getLogger("libra.data")

# What the raw stream carries before decoding: (shard, key, {extension: bytes}), or a marker for
# a shard that broke (so damaged shards are counted like any other bad example).
RawSample = tuple[str, str, dict[str, bytes]]


class StreamCursor(NamedTuple):
    """A place in a slot's stream: the ``shard``-th shard of the slot's sequence (counted over all
    passes), after ``sample`` of its samples; the next one starts at byte ``offset`` of the tar
    (None for a compressed tar, which is read from its start and counted past)."""

    shard: int = 0
    sample: int = 0
    offset: int | None = 0


@dataclass(frozen=True)
class StreamItem:
    """One drawn example and its place in the stream: ``index`` counts what ``slot`` drew in
    ``epoch`` before it. The collator passes the places on so the trainer can record them.
    ``next_start`` is set on a slot's last example of an epoch: where its next epoch starts."""

    item: CaptionSample | Skipped
    slot: int
    epoch: int
    index: int
    num_slots: int = 1
    next_start: StreamCursor | None = None


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
        t2i_hide_features_prob: float = 0.9,  # reference: 1 - continuous_prob_t2i (0.1)
        decode_draft_size: int | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        shard_retries: int = 2,
        shard_retry_delay: float = 1.0,  # seconds before the first retry, doubled for each next one
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
        for name, value in (("t2i_prob", t2i_prob), ("t2i_hide_features_prob", t2i_hide_features_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LaionShards: {name}={value} is not a probability; give a value in [0, 1]")
        if shard_retries < 0 or shard_retry_delay < 0:
            raise ValueError("LaionShards: shard_retries and shard_retry_delay must not be negative")
        self.image_transform = image_transform
        self.resampled, self.samples_per_epoch, self.shuffle = resampled, samples_per_epoch, shuffle
        self.shuffle_buffer, self.shuffle_initial = shuffle_buffer, min(shuffle_initial, shuffle_buffer)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shape_ratio_threshold, self.min_image_size = shape_ratio_threshold, min_image_size
        self.clean_caption = CaptionCleaner(max_words, lowercase, strip_html)
        self.t2i_prob, self.t2i_hide_features_prob = t2i_prob, t2i_hide_features_prob
        self.decode_draft_size, self.max_image_pixels = decode_draft_size, max_image_pixels
        self.shard_retries, self.shard_retry_delay = shard_retries, shard_retry_delay
        self.epoch = 0
        self._resume_epoch, self._resume_drawn, self._resume_slots = -1, {}, None
        self._resume_starts: dict[int, StreamCursor] = {}

    # -- position ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (it reseeds the order), without positions: prefer ``load_state_dict``
        with the ``ReaderState`` before each epoch, which also says where each slot goes on."""
        self.epoch = epoch

    def load_state_dict(self, state: dict) -> None:
        """Go to the epoch of a ``ReaderState.state_dict()``: each slot starts where that state says
        its stream stands and skips what it had already handed out of the epoch. Call it before every
        epoch, not only on resume. Needs the same shards, seed, ranks and workers."""
        self.epoch = self._resume_epoch = int(state["epoch"])
        self._resume_drawn = {int(slot): int(n) for slot, n in state["drawn_per_slot"].items()}
        self._resume_slots = state.get("num_slots")
        starts = state.get("stream_starts") or {}
        self._resume_starts = {int(slot): StreamCursor(*cursor) for slot, cursor in starts.items()}

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
        quota = None if self.samples_per_epoch is None else self.samples_per_epoch // num_slots
        if quota == 0:
            raise ValueError(
                f"LaionShards: samples_per_epoch={self.samples_per_epoch} is less than one per slot "
                f"({num_slots} = ranks x workers); raise it"
            )
        shards = _ShardSequence(self.urls, slot, num_slots, self.seed, self.shuffle, self.resampled)
        already_drawn = 0
        if epoch == self._resume_epoch:
            if self._resume_slots not in (None, num_slots):
                raise ValueError(
                    f"LaionShards: the saved position is for {self._resume_slots} slots (ranks x workers), "
                    f"this run has {num_slots}; resume with the same number of ranks and DataLoader workers"
                )
            already_drawn = self._resume_drawn.get(slot, 0)
        start = self._epoch_start(slot, epoch, shards.pass_length, endless=quota is not None)
        # without a quota an epoch is one pass: the slot's shards once, from the pass's start
        stop = None if quota is not None else start.shard + shards.pass_length
        reading = _Reading(start)
        raw = self._raw_stream(shards, start, stop, reading, slot)
        if quota is not None:
            raw = itertools.islice(raw, quota)
        if self.shuffle and self.shuffle_buffer > 1:
            order_rng = random.Random(f"{self.seed}/{epoch}/{slot}")
            raw = _shuffled(raw, self.shuffle_buffer, self.shuffle_initial, order_rng)
        for index, entry in enumerate(raw):
            if index < already_drawn:  # replayed for exact resume, never decoded
                continue
            item = entry if isinstance(entry, Skipped) else self._decode(entry, epoch, slot, index)
            # the buffer hands out the epoch's last example only after the quota has been read
            last = quota is not None and index == quota - 1
            yield StreamItem(item, slot, epoch, index, num_slots, reading.cursor if last else None)

    def _epoch_start(self, slot: int, epoch: int, pass_length: int, endless: bool) -> StreamCursor:
        """Where the slot's stream starts this epoch: where the state says; else at the start of
        pass ``epoch`` (the only start an epoch without a quota has)."""
        if epoch == self._resume_epoch and slot in self._resume_starts:
            return self._resume_starts[slot]
        if endless and epoch > 0:
            log.warning(
                f"LaionShards: no position for slot {slot} at the start of epoch {epoch}, so it starts a "
                "fresh pass over its shards and the last epoch's pass is left unfinished; call "
                "load_state_dict(reader_state.state_dict()) before each epoch to go on where it stopped"
            )
        return StreamCursor(epoch * pass_length)

    def _raw_stream(
        self, shards: _ShardSequence, start: StreamCursor, stop: int | None, reading: _Reading, slot: int
    ) -> Iterator[RawSample | Skipped]:
        """Undecoded examples from ``start`` on, shard after shard of the slot's sequence until
        shard ``stop`` (None: without end); ``reading.cursor`` is the place after the last one."""
        index, skip_samples, offset = start
        barren = 0  # shards in a row without a sample: stops an endless loop over bad shards
        barren_limit = len(shards.urls) + 1 if shards.resampled else shards.pass_length
        while stop is None or index < stop:
            shard = shards[index]
            produced = False
            seen = skip_samples if offset is not None else 0  # samples of this shard read so far
            try:
                tar = iter_tar_samples(shard, offset or 0, self.shard_retries, self.shard_retry_delay)
                for sample in tar:
                    seen += 1
                    if seen <= skip_samples:  # compressed: no byte offsets, counted past instead
                        continue
                    produced = True
                    if sample.at_end:
                        reading.cursor = StreamCursor(index + 1)
                    else:
                        reading.cursor = StreamCursor(index, seen, sample.next_offset)
                    yield shard, sample.key, sample.members
            except DamagedShard as damage:
                reading.cursor = StreamCursor(index + 1)
                where = f"shard {shard}" + (f" at key {damage.last_key}" if damage.last_key else "")
                yield skip("missing_shard" if damage.missing else "damaged_shard", where, str(damage.error))
            barren = 0 if produced else barren + 1
            if stop is None and barren >= barren_limit:
                raise RuntimeError(
                    f"LaionShards: slot {slot} read {barren} shards in a row without one sample (the last: "
                    f"{shard}); they are empty, missing or damaged, see the warnings above"
                )
            index, skip_samples, offset = index + 1, 0, 0

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
            image = decode_image_bytes(members[image_ext], self.decode_draft_size, self.max_image_pixels)
        except IMAGE_ERRORS as error:
            return skip(image_fault(error), where, str(error))
        try:
            # draft decoding shrinks both sides by the same power of two, so the ratio holds
            acceptable = shape_acceptable(*image.size, self.shape_ratio_threshold, self.min_image_size)
        except ValueError as error:
            return skip("bad_shape", where, str(error))
        task, hide = "i2t", False
        if self.t2i_prob > 0 and acceptable:
            # one generator per example, so a resumed stream draws the same without replaying
            draw = random.Random(f"{self.seed}/{epoch}/{slot}/{index}")
            if draw.random() < self.t2i_prob:
                # the image is the target: its CLIP features are mostly hidden from the input
                task, hide = "t2i", draw.random() < self.t2i_hide_features_prob
        pixels = preprocess(self.image_transform, image, where)
        if isinstance(pixels, Skipped):
            return pixels
        key = f"{Path(shard).name}/{key}"
        return CaptionSample(pixels, caption, key=key, task=task, hide_image_features=hide)


class _ShardSequence:
    """The shards one slot reads, one after another without end: its own share pass after pass,
    each pass in its own seeded order, or (resampled) each next shard drawn from all of them.
    ``sequence[i]`` is the i-th, computed without the ones before it."""

    def __init__(self, urls: list[str], slot: int, num_slots: int, seed: int, shuffle: bool, resampled: bool):
        self.urls, self.slot, self.seed, self.shuffle, self.resampled = urls, slot, seed, shuffle, resampled
        self.mine = urls if resampled else urls[slot::num_slots]
        if not self.mine:
            raise ValueError(
                f"LaionShards: {len(urls)} shards for {num_slots} slots (ranks x workers) leaves "
                f"slot {slot} without a shard; use fewer workers, more shards or resampled=True"
            )
        self._pass, self._order = -1, self.mine

    @property
    def pass_length(self) -> int:
        return len(self.mine)

    def __getitem__(self, index: int) -> str:
        if self.resampled:
            return random.Random(f"{self.seed}/{self.slot}/draw/{index}").choice(self.urls)
        number, position = divmod(index, len(self.mine))
        if number != self._pass:
            self._pass, self._order = number, list(self.mine)
            if self.shuffle:
                random.Random(f"{self.seed}/{self.slot}/pass/{number}").shuffle(self._order)
        return self._order[position]


@dataclass
class _Reading:
    """Where the raw stream stands: the place after the last example it gave out."""

    cursor: StreamCursor


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


def _shuffled(items: Iterator, size: int, initial: int, rng: random.Random) -> Iterator:
    """webdataset-style shuffle buffer: nothing comes out until ``initial`` items are in; then it
    takes two items per one given out until it holds ``size``, then one for one; at the end of the
    items it gives out all it holds."""
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
