"""Repeated measurements for perf/: every figure is reported as its median and its range.

On a shared CPU one measurement can be 2x off the next, so a figure is measured several times and
printed as `median [min - max]`; a ratio between two models is formed within each round (both models
measured back to back) and then summarised the same way, so slow phases of the machine cancel out.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Spread:
    """Several measurements of one figure."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def format(self, digits: int = 3) -> str:
        if len(self.values) == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}-{self.high:.{digits}f}]"

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high, "values": self.values}


def time_calls(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> Spread:
    """Wall time of `repeats` calls of fn, each its own measurement (sync: wait for the device)."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return Spread(times)


def ratios(numerators: list[float], denominators: list[float]) -> Spread:
    """Round-by-round ratios of two figures measured in the same rounds."""
    return Spread([a / b for a, b in zip(numerators, denominators, strict=True)])
