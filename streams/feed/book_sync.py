"""Binance's local-order-book procedure for one symbol: when the depth diffs are in sequence, when to resync.

The feed publishes every diff unchanged; this state machine decides whether the book the diffs describe is
complete and asks for a new REST snapshot when it is not. It keeps the levels too, so that the book can be
checked and measured.

The documented rules differ by venue:
- USD-M futures: drop buffered diffs with `u` < `lastUpdateId`; the first one applied has
  `U` <= `lastUpdateId` <= `u`; each later diff's `pu` equals the previous diff's `u`.
- spot: drop buffered diffs with `u` <= `lastUpdateId`; the first one applied has
  `U` <= `lastUpdateId` + 1 <= `u`; each later diff's `U` equals the previous diff's `u` + 1.
A snapshot older than the first buffered diff cannot be bridged: fetch another.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MAX_BUFFERED_DIFFS = 5_000  # a snapshot takes under a second to fetch; 5,000 diffs is minutes of @depth@100ms
MAX_LEVELS_PER_SIDE = 5_000  # Binance's deepest snapshot; levels beyond are far from any price that matters
TRIM_SLACK = 500  # trimmed back once over the cap by this much, not on every diff


class Outcome(Enum):
    """What became of one diff."""

    APPLIED = "applied"  # in sequence, applied to the book
    BUFFERED = "buffered"  # waiting for a snapshot
    STALE = "stale"  # older than the book: ignored
    GAP = "gap"  # out of sequence: the book is lost until a new snapshot


@dataclass(frozen=True, slots=True)
class Diff:
    """One `depthUpdate`: its update-id range and the levels it sets (quantity 0 removes a level)."""

    first_id: int  # U
    last_id: int  # u
    previous_id: int | None  # pu (USD-M only)
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Diff:
        """A `depthUpdate` payload; raises ValueError when its ids or levels are not what Binance sends."""
        first_id, last_id, previous_id = data.get("U"), data.get("u"), data.get("pu")
        if not isinstance(first_id, int) or not isinstance(last_id, int) or first_id > last_id:
            raise ValueError("depthUpdate without integer U <= u")
        if previous_id is not None and not isinstance(previous_id, int):
            raise ValueError("depthUpdate with a non-integer pu")
        return cls(first_id, last_id, previous_id, levels(data.get("b", [])), levels(data.get("a", [])))


def levels(raw: Any) -> tuple[tuple[float, float], ...]:
    """[[price, quantity], ...] as decimal strings → floats; ValueError unless positive prices, quantities >= 0."""
    if not isinstance(raw, list):
        raise ValueError("price levels must be a list")
    parsed = []
    for level in raw:
        if not isinstance(level, list) or len(level) < 2:
            raise ValueError("a price level must be [price, quantity]")
        price, quantity = float(level[0]), float(level[1])
        if not (math.isfinite(price) and math.isfinite(quantity) and price > 0 and quantity >= 0):
            raise ValueError(f"price level out of range: {level[:2]!r}")
        parsed.append((price, quantity))
    return tuple(parsed)


@dataclass(slots=True)
class DepthSync:
    """One symbol's book; `futures` selects the USD-M rules, else spot's."""

    futures: bool
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    last_update_id: int | None = None  # of the book, once synced
    synced: bool = False
    buffered: deque[Diff] = field(default_factory=lambda: deque(maxlen=MAX_BUFFERED_DIFFS))
    snapshot_id: int | None = None  # a snapshot taken, waiting for the diff that bridges it

    def on_diff(self, diff: Diff) -> Outcome:
        """Apply, buffer or refuse one diff by the venue's rules."""
        if not self.synced:
            if self.snapshot_id is not None:
                return self._bridge(diff)
            self.buffered.append(diff)
            return Outcome.BUFFERED
        assert self.last_update_id is not None
        if diff.last_id <= self.last_update_id:
            return Outcome.STALE
        in_sequence = (
            diff.previous_id == self.last_update_id if self.futures else diff.first_id == self.last_update_id + 1
        )
        if not in_sequence:
            self._lose(diff)
            return Outcome.GAP
        self._apply(diff)
        return Outcome.APPLIED

    def on_snapshot(self, last_update_id: int, bids: list[Any], asks: list[Any]) -> bool:
        """Take a REST snapshot; False when it is older than the buffered diffs and another is needed.
        Raises ValueError (and changes nothing) when its levels are not what Binance sends."""
        new_bids, new_asks = levels(bids), levels(asks)
        self.bids = {price: quantity for price, quantity in new_bids if quantity > 0}
        self.asks = {price: quantity for price, quantity in new_asks if quantity > 0}
        self._trim()
        self.snapshot_id = last_update_id
        self.synced = False
        self.last_update_id = None
        pending, self.buffered = list(self.buffered), deque(maxlen=MAX_BUFFERED_DIFFS)
        outcomes = [self.on_diff(diff) for diff in pending]  # after a gap, the rest wait for the next snapshot
        return Outcome.GAP not in outcomes

    def _bridge(self, diff: Diff) -> Outcome:
        assert self.snapshot_id is not None
        snapshot_id = self.snapshot_id
        if diff.last_id < snapshot_id or (not self.futures and diff.last_id == snapshot_id):
            return Outcome.STALE
        target = snapshot_id if self.futures else snapshot_id + 1
        if not diff.first_id <= target <= diff.last_id:
            self._lose(diff)  # the snapshot is older than the stream: it cannot be bridged
            return Outcome.GAP
        self.synced = True
        self.snapshot_id = None
        self._apply(diff)
        return Outcome.APPLIED

    def _lose(self, diff: Diff) -> None:
        self.synced = False
        self.snapshot_id = None
        self.last_update_id = None
        self.buffered.clear()
        self.buffered.append(diff)

    def _apply(self, diff: Diff) -> None:
        for side, updates in ((self.bids, diff.bids), (self.asks, diff.asks)):
            for price, quantity in updates:
                if quantity == 0:
                    side.pop(price, None)
                else:
                    side[price] = quantity
        self.last_update_id = diff.last_id
        self._trim()

    def _trim(self) -> None:
        """At most MAX_LEVELS_PER_SIDE levels a side, the nearest to the touch (a diff may add any number)."""
        if len(self.bids) > MAX_LEVELS_PER_SIDE + TRIM_SLACK:
            self.bids = {p: self.bids[p] for p in heapq.nlargest(MAX_LEVELS_PER_SIDE, self.bids)}
        if len(self.asks) > MAX_LEVELS_PER_SIDE + TRIM_SLACK:
            self.asks = {p: self.asks[p] for p in heapq.nsmallest(MAX_LEVELS_PER_SIDE, self.asks)}
