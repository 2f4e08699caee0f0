"""perf/timing.py: repeated measurements summarised as median and range, ratios formed round by round."""

import pytest

from perf.timing import Spread, ratios, time_calls


def test_spread_reports_median_and_range():
    s = Spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high) == (2.5, 1.0, 10.0)
    assert s.format(1) == "2.5 [1.0-10.0]"
    assert Spread([0.25]).format(2) == "0.25"
    assert s.as_dict() == {"median": 2.5, "min": 1.0, "max": 10.0, "values": [3.0, 1.0, 2.0, 10.0]}


def test_ratios_pair_the_rounds():
    # the machine was twice as slow in round 2: per-round ratios cancel it, a ratio of medians would not
    ours, base = [1.0, 2.0, 1.1], [2.0, 4.0, 2.0]
    assert ratios(ours, base).values == [0.5, 0.5, 0.55]
    with pytest.raises(ValueError):
        ratios([1.0], [1.0, 2.0])


def test_time_calls_measures_each_call():
    calls, syncs = [], []
    spread = time_calls(lambda: calls.append(1), 4, sync=lambda: syncs.append(1))
    assert len(spread.values) == 4 and len(calls) == 4 and len(syncs) == 8
    assert all(v >= 0 for v in spread.values)
