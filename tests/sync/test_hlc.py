"""Hybrid logical clock properties under arbitrary clock skew."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canvass.sync.hlc import MAX_DRIFT_MS, ClockDrift, HybridClock, Timestamp


class FakeWall:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


@given(
    skews=st.lists(st.integers(min_value=-3_600_000, max_value=3_600_000), min_size=2, max_size=5),
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4), st.booleans(), st.integers(min_value=-5000, max_value=5000)),
        max_size=60,
    ),
)
def test_causality_and_monotonicity_hold_whatever_the_skew(
    skews: list[int], events: list[tuple[int, bool, int]]
) -> None:
    """Each clock only moves forward, and an event that saw another sorts after it."""
    walls = [FakeWall(1_700_000_000_000 + s) for s in skews]
    clocks = [HybridClock(f"n{i}", walls[i]) for i in range(len(walls))]
    sent: list[Timestamp] = []
    last = [c.last for c in clocks]
    for who, receives, step in events:
        i = who % len(clocks)
        walls[i].now += step  # wall clocks may even go backwards
        if receives and sent:
            seen = sent[-1]
            stamp = clocks[i].receive(seen)
            assert stamp > seen
        else:
            stamp = clocks[i].tick()
        assert stamp > last[i]
        assert stamp.encode() > last[i].encode() or last[i].wall_ms == 0
        last[i] = stamp
        sent.append(stamp)


def test_encoding_round_trips_and_sorts_like_the_tuple() -> None:
    a, b = Timestamp(1_700_000_000_000, 3, "dev-a"), Timestamp(1_700_000_000_000, 12, "dev-a")
    assert Timestamp.decode(a.encode()) == a
    assert (a < b) and (a.encode() < b.encode())
    with pytest.raises(ValueError, match="not a hybrid"):
        Timestamp.decode("yesterday")


def test_a_timestamp_from_far_in_the_future_is_refused() -> None:
    clock = HybridClock("server", FakeWall(1_700_000_000_000))
    with pytest.raises(ClockDrift):
        clock.receive(Timestamp(1_700_000_000_000 + MAX_DRIFT_MS + 1, 0, "liar"))
