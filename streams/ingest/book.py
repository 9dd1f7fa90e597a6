"""A per-symbol L2 order book from Binance depth diffs and a REST snapshot, and the depth figures it yields.

Binance's rule: buffer diffs from the first one received, take the snapshot, drop diffs with `u` below its
`lastUpdateId`, then apply the rest in order; each diff chains on the previous (`pu` = previous `u` on USD-M,
`U` = previous `u` + 1 on spot). A break in the chain puts the book out of sync until the next snapshot.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from streams.ingest.events import DepthSnapshot, DepthUpdate

DEPTH_BANDS = (("0.1%", 0.001), ("0.5%", 0.005), ("1%", 0.01))
MAX_BUFFERED_DIFFS = 2_000
MAX_BUFFERED_LEVELS = 100_000  # price levels across the buffered diffs: their count alone does not bound them
MAX_LEVELS_PER_SIDE = 5_000  # levels kept a side; the analysis reads within 1 % of mid, Binance's snapshot 5,000
TRIM_SLACK = 500  # a side is trimmed back to the cap once it exceeds it by this much, not on every diff


@dataclass(slots=True)
class OrderBook:
    symbol: str
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    last_update_id: int | None = None
    synced: bool = False
    buffered: list[DepthUpdate] = field(default_factory=list)
    buffered_levels: int = 0
    resyncs: int = 0

    def apply(self, event: DepthUpdate | DepthSnapshot) -> None:
        if isinstance(event, DepthSnapshot):
            self._snapshot(event)
        elif self.synced:
            self._diff(event)
        else:
            self.buffered.append(event)
            self.buffered_levels += len(event.bids) + len(event.asks)
            while len(self.buffered) > MAX_BUFFERED_DIFFS or (
                self.buffered_levels > MAX_BUFFERED_LEVELS and len(self.buffered) > 1
            ):
                dropped = self.buffered.pop(0)
                self.buffered_levels -= len(dropped.bids) + len(dropped.asks)

    def _snapshot(self, snapshot: DepthSnapshot) -> None:
        self.bids = {p: q for p, q in snapshot.bids if q > 0}
        self.asks = {p: q for p, q in snapshot.asks if q > 0}
        self.last_update_id = snapshot.last_update_id
        self.synced = True
        self._trim()
        pending, self.buffered, self.buffered_levels = self.buffered, [], 0
        for diff in pending:
            if diff.last_update_id >= snapshot.last_update_id and self.synced:
                self._diff(diff, first_after_snapshot=diff.first_update_id <= snapshot.last_update_id)

    def _diff(self, diff: DepthUpdate, first_after_snapshot: bool = False) -> None:
        assert self.last_update_id is not None
        if diff.last_update_id < self.last_update_id:
            return  # already in the snapshot
        chained = (
            first_after_snapshot
            or (diff.previous_update_id is not None and diff.previous_update_id == self.last_update_id)
            or (diff.previous_update_id is None and diff.first_update_id == self.last_update_id + 1)
            or (diff.first_update_id <= self.last_update_id + 1 <= diff.last_update_id)
        )
        if not chained:
            self.synced = False
            self.resyncs += 1
            self.buffered, self.buffered_levels = [diff], len(diff.bids) + len(diff.asks)
            return
        for side, levels in ((self.bids, diff.bids), (self.asks, diff.asks)):
            for price, quantity in levels:
                if quantity == 0:
                    side.pop(price, None)
                else:
                    side[price] = quantity
        self.last_update_id = diff.last_update_id
        self._trim()

    def _trim(self) -> None:
        """Keep at most MAX_LEVELS_PER_SIDE levels a side, the nearest to the touch: far levels never reach the
        analysis, and a diff can add any number of them."""
        if len(self.bids) > MAX_LEVELS_PER_SIDE + TRIM_SLACK:
            self.bids = {p: self.bids[p] for p in heapq.nlargest(MAX_LEVELS_PER_SIDE, self.bids)}
        if len(self.asks) > MAX_LEVELS_PER_SIDE + TRIM_SLACK:
            self.asks = {p: self.asks[p] for p in heapq.nsmallest(MAX_LEVELS_PER_SIDE, self.asks)}

    def analysis(self) -> dict[str, Any] | None:
        """Spread, depth (USDT, both sides) within 0.1/0.5/1 % of mid, and imbalance within 1 %; None unsynced."""
        if not self.synced or not self.bids or not self.asks:
            return None
        best_bid, best_ask = max(self.bids), min(self.asks)
        if best_bid >= best_ask:
            return None
        mid = (best_bid + best_ask) / 2
        depth: dict[str, float] = {}
        bid_1pct = ask_1pct = 0.0
        for name, band in DEPTH_BANDS:
            bid = sum(p * q for p, q in self.bids.items() if p >= mid * (1 - band))
            ask = sum(p * q for p, q in self.asks.items() if p <= mid * (1 + band))
            depth[name] = bid + ask
            bid_1pct, ask_1pct = bid, ask
        total = bid_1pct + ask_1pct
        return {
            "spread_bps": (best_ask - best_bid) / mid * 1e4,
            "depth_usdt": depth,
            "book_imbalance": (bid_1pct - ask_1pct) / total if total > 0 else 0.0,
            "best_bid": best_bid,
            "best_ask": best_ask,
        }
