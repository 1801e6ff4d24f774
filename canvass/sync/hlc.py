"""Hybrid logical clocks: a timestamp every device can make offline that still
orders causally related events correctly when device clocks are skewed.

A timestamp is (wall milliseconds, counter, node). ``tick`` makes one for a local
event; ``receive`` advances the clock past a timestamp seen from elsewhere, so an
edit made after seeing another always sorts after it, whatever the wall clocks
say. The string form sorts lexicographically in the same order as the tuple.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

# Wall time is never allowed to run ahead of the physical clock by more than this:
# a timestamp from a device whose clock is a year fast must not poison everyone.
MAX_DRIFT_MS = 24 * 60 * 60 * 1000


class Timestamp(msgspec.Struct, frozen=True, order=True):
    wall_ms: int
    counter: int
    node: str

    def encode(self) -> str:
        return f"{self.wall_ms:015d}-{self.counter:05d}-{self.node}"

    @classmethod
    def decode(cls, text: str) -> Timestamp:
        try:
            wall, counter, node = text.split("-", 2)
            return cls(int(wall), int(counter), node)
        except ValueError as exc:
            raise ValueError(f"not a hybrid logical clock timestamp: {text!r}") from exc


class ClockDrift(ValueError):
    """A remote timestamp is further ahead of our physical clock than allowed."""


class HybridClock:
    def __init__(self, node: str, now_ms: Callable[[], int] | None = None) -> None:
        self.node = node
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = Timestamp(0, 0, node)

    @property
    def last(self) -> Timestamp:
        return self._last

    def tick(self) -> Timestamp:
        """A timestamp for a local event, later than every one this clock made or saw."""
        wall = max(self._now_ms(), self._last.wall_ms)
        counter = self._last.counter + 1 if wall == self._last.wall_ms else 0
        self._last = Timestamp(wall, counter, self.node)
        return self._last

    def receive(self, remote: Timestamp) -> Timestamp:
        """Merge a timestamp seen from another node; return the new local time."""
        physical = self._now_ms()
        if remote.wall_ms - physical > MAX_DRIFT_MS:
            raise ClockDrift(f"remote clock is {remote.wall_ms - physical} ms ahead of ours")
        wall = max(physical, self._last.wall_ms, remote.wall_ms)
        if wall == self._last.wall_ms == remote.wall_ms:
            counter = max(self._last.counter, remote.counter) + 1
        elif wall == self._last.wall_ms:
            counter = self._last.counter + 1
        elif wall == remote.wall_ms:
            counter = remote.counter + 1
        else:
            counter = 0
        self._last = Timestamp(wall, counter, self.node)
        return self._last
