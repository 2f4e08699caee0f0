"""From reader items to training batches, and the record of how far the readers got.

``ReaderCollator`` is the DataLoader ``collate_fn``: it unwraps stream positions, drops skip
markers (counting them), and hands the good samples to the processor's text side (the tokenizer's
``LibraCollator``), all inside the worker. Each ``DataBatch`` carries its own bookkeeping, so the
main process learns what the workers skipped and where every worker's stream stands.

``ReaderState`` lives in the main process next to the training state: ``update(batch)`` after
each consumed batch, ``state_dict()`` into the checkpoint, and before each epoch (on resume too)
the reader (``LaionShards``) or sampler (``ResumableSampler``) takes it with ``load_state_dict``.
It also counts what the logs show: skipped examples per reason and samples cut to the processor's
``max_length``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .laion import StreamItem
from .skips import SkipCounter, Skipped, skip


@dataclass
class DataBatch:
    """One batch: ``inputs`` is what the processor made of the good samples (a ``TextBatch``), or
    the samples themselves without a processor, or None when every item was skipped — the trainer
    must still take a step then (a zero-loss one), so that all ranks stay in step."""

    inputs: Any
    num_samples: int
    drawn: int  # items the batch used up from its reader, skipped ones included
    skipped: dict[str, int] = field(default_factory=dict)
    positions: list[tuple[int, int, int]] = field(default_factory=list)  # (slot, epoch, index) per item
    num_slots: int | None = None  # ranks x workers of the stream, when the items came from one
    next_starts: dict[int, tuple] = field(default_factory=dict)  # slot -> where its next epoch starts
    truncated: int = 0  # samples the processor cut to its max_length
    text_to_image: int = 0  # samples with task="t2i" among the good ones (caption -> image targets)


class ReaderCollator:
    """``collate_fn`` around the processor's text side; picklable, so it runs in the workers."""

    def __init__(self, processor: Callable[[list], Any] | None = None):
        self.processor = processor

    def __call__(self, items: Sequence[Any]) -> DataBatch:
        positions, skipped, samples, num_slots, next_starts = [], SkipCounter(), [], None, {}
        for item in items:
            if isinstance(item, StreamItem):
                positions.append((item.slot, item.epoch, item.index))
                num_slots = item.num_slots
                if item.next_start is not None:
                    next_starts[item.slot] = tuple(item.next_start)
                item = item.item
            if isinstance(item, Skipped):
                skipped.add(item)
            else:
                samples.append(item)
        inputs = samples or None
        if samples and self.processor is not None:
            try:
                inputs = self.processor(samples)
            except ValueError:
                # only now is each sample tried alone: the bad one is dropped and named
                # instead of losing the batch (or the run)
                samples = self._accepted(samples, skipped)
                inputs = self.processor(samples) if samples else None
        truncated = int(getattr(inputs, "truncated", 0))  # a TextBatch counts its cut samples
        text_to_image = sum(getattr(sample, "task", None) == "t2i" for sample in samples)
        return DataBatch(
            inputs, len(samples), len(items), dict(skipped), positions, num_slots, next_starts, truncated,
            text_to_image,
        )  # fmt: skip

    def _accepted(self, samples: list, skipped: SkipCounter) -> list:
        kept = []
        for sample in samples:
            try:
                self.processor([sample])
                kept.append(sample)
            except ValueError as error:
                skipped.add(skip("rejected_sample", f"sample {getattr(sample, 'key', '?')}", str(error)))
        return kept


class ReaderState:
    """Where the readers stand, as seen from the batches the trainer actually consumed.

    ``drawn_per_slot``: items each stream slot (rank x worker) handed out this epoch, and
    ``stream_starts``: where each slot's stream started it, for ``LaionShards`` (``stream_next``
    collects where each slot stopped, the starts of the next epoch); ``drawn``: items this rank used
    this epoch, for ``ResumableSampler``; ``skipped`` (counts per reason) and ``truncated`` (samples
    cut to the processor's ``max_length``): since the start of training, for logging.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.drawn = 0
        self.drawn_per_slot: dict[int, int] = {}
        self.num_slots: int | None = None
        self.stream_starts: dict[int, list] = {}
        self.stream_next: dict[int, list] = {}
        self.skipped = SkipCounter()
        self.truncated = 0
        self.text_to_image = 0

    def start_epoch(self, epoch: int) -> None:
        """The next epoch: a stream goes on where each of its slots stopped in the last one."""
        self.epoch, self.drawn, self.drawn_per_slot = epoch, 0, {}
        self.stream_starts, self.stream_next = self.stream_next, {}

    def update(self, batch: DataBatch) -> None:
        self.drawn += batch.drawn
        self.skipped.update(batch.skipped)
        self.truncated += batch.truncated
        self.text_to_image += batch.text_to_image
        self.num_slots = batch.num_slots or self.num_slots
        for slot, cursor in batch.next_starts.items():
            self.stream_next[slot] = list(cursor)
        for slot, epoch, index in batch.positions:
            if epoch != self.epoch:
                raise ValueError(
                    f"batch from epoch {epoch} while the reader state is at epoch {self.epoch}: call "
                    "start_epoch(epoch) and dataset.set_epoch(epoch) together before each epoch"
                )
            self.drawn_per_slot[slot] = max(self.drawn_per_slot.get(slot, 0), index + 1)

    def metrics(self) -> dict[str, int]:
        """Counts under fixed names for the metric logger: ``data/skipped/<reason>`` and
        ``data/truncated`` (samples cut to the processor's ``max_length``)."""
        return {**self.skipped.as_metrics(), "data/truncated": self.truncated}

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "drawn": self.drawn,
            "drawn_per_slot": dict(self.drawn_per_slot),
            "num_slots": self.num_slots,
            "stream_starts": {slot: list(cursor) for slot, cursor in self.stream_starts.items()},
            "stream_next": {slot: list(cursor) for slot, cursor in self.stream_next.items()},
            "skipped": dict(self.skipped),
            "truncated": self.truncated,
            "text_to_image": self.text_to_image,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.drawn = int(state["epoch"]), int(state["drawn"])
        self.drawn_per_slot = {int(slot): int(n) for slot, n in state["drawn_per_slot"].items()}
        self.num_slots = state.get("num_slots")
        # absent from checkpoints written before streams carried positions across epochs
        self.stream_starts = {int(slot): list(c) for slot, c in state.get("stream_starts", {}).items()}
        self.stream_next = {int(slot): list(c) for slot, c in state.get("stream_next", {}).items()}
        self.skipped = SkipCounter(state["skipped"])
        self.truncated = int(state.get("truncated", 0))
        self.text_to_image = int(state.get("text_to_image", 0))  # absent in older checkpoints
