"""Bad-data bookkeeping: a marker for a skipped example and a counter the trainer can log.

Readers never raise on bad data. They warn once per bad example, naming where it came from
("shard .../00003.tar key 000000042", "llava entry 17 (id abc)"), and hand a ``Skipped`` marker
to the collator instead of a sample, so the counts travel with the batches out of the
DataLoader workers (a counter inside a worker process would be invisible to the trainer).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger("libra.data")


@dataclass(frozen=True)
class Skipped:
    """Stands in for an example that could not be read; ``reason`` is a short fixed name
    (``corrupt_image``, ``no_caption``, ``missing_image`` ...) used as a metric suffix."""

    reason: str
    where: str


def skip(reason: str, where: str, detail: str = "") -> Skipped:
    """Warn about one bad example and return its marker."""
    message = f"skipping {where}: {reason}"
    if detail:
        message += f" ({detail})"
    log.warning(message)
    return Skipped(reason, where)


class SkipCounter(Counter):
    """Counts of skipped examples per reason; ``as_metrics`` gives fixed slash names."""

    def add(self, marker: Skipped) -> None:
        self[marker.reason] += 1

    def as_metrics(self, prefix: str = "data/skipped") -> dict[str, int]:
        return {f"{prefix}/{reason}": count for reason, count in sorted(self.items())}
