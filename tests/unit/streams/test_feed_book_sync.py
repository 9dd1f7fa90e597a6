"""Binance's local-order-book procedure (streams.feed.book_sync) on real captures, for both venues' rules."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.feed.book_sync import DepthSync, Diff, Outcome


def capture(path: Path) -> tuple[dict[str, Any], list[Diff], int]:
    """(the REST snapshot line, every depth diff in receive order, how many diffs came before the snapshot)."""
    snapshot: dict[str, Any] | None = None
    diffs: list[Diff] = []
    before = 0
    with gzip.open(path, "rb") as handle:
        for line in handle:
            message = orjson.loads(line.split(b" ", 1)[1])
            if "lastUpdateId" in message:
                snapshot, before = message, len(diffs)
            elif message["data"].get("e") == "depthUpdate":
                diffs.append(Diff.from_message(message["data"]))
    assert snapshot is not None
    return snapshot, diffs, before


def levels(book: DepthSync) -> tuple[dict[float, float], dict[float, float]]:
    return dict(book.bids), dict(book.asks)


def reference(snapshot: dict[str, Any], diffs: list[Diff], futures: bool, through: int) -> tuple[dict, dict]:
    """The book by the documented rule alone: the snapshot, then every diff after it up to id `through`."""
    bids = {float(p): float(q) for p, q in snapshot["bids"]}
    asks = {float(p): float(q) for p, q in snapshot["asks"]}
    last = snapshot["lastUpdateId"]
    for diff in diffs:
        if diff.last_id < last or (not futures and diff.last_id == last) or diff.last_id > through:
            continue
        for side, updates in ((bids, diff.bids), (asks, diff.asks)):
            for price, quantity in updates:
                if float(quantity) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = float(quantity)
    return bids, asks


@pytest.mark.parametrize(
    ("folder", "name", "futures"),
    [
        ("binance-futures-ws", "btcusdt_20240718.gz", True),
        ("binance-futures-ws", "ethusdt_20240808.gz", True),
        ("binance-spot-ws", "btcusdt_20240808.gz", False),
    ],
)
def test_buffered_diffs_and_snapshot_make_the_documented_book(
    data_dir: Path, folder: str, name: str, futures: bool
) -> None:
    snapshot, diffs, before = capture(data_dir / folder / name)
    book = DepthSync(futures=futures)
    outcomes = [book.on_diff(diff) for diff in diffs[:before]]
    assert outcomes and set(outcomes) == {Outcome.BUFFERED}
    book.on_snapshot(snapshot["lastUpdateId"], snapshot["bids"], snapshot["asks"])
    later = [book.on_diff(diff) for diff in diffs[before:]]
    assert Outcome.GAP not in later and book.synced
    assert book.last_update_id == diffs[-1].last_id
    assert levels(book) == reference(snapshot, diffs, futures, diffs[-1].last_id)


@pytest.mark.parametrize(
    ("folder", "name", "futures"),
    [
        ("binance-futures-ws", "btcusdt_20240808.gz", True),
        ("binance-spot-ws", "ethusdt_20240808.gz", False),
    ],
)
def test_a_missing_diff_is_a_gap_until_a_newer_snapshot(data_dir: Path, folder: str, name: str, futures: bool) -> None:
    snapshot, diffs, before = capture(data_dir / folder / name)
    book = DepthSync(futures=futures)
    for diff in diffs[:before]:
        book.on_diff(diff)
    book.on_snapshot(snapshot["lastUpdateId"], snapshot["bids"], snapshot["asks"])
    cut = before + 50
    for diff in diffs[before:cut]:
        assert book.on_diff(diff) is Outcome.APPLIED
    assert book.on_diff(diffs[cut + 1]) is Outcome.GAP  # diffs[cut] never arrived
    assert not book.synced
    assert book.on_diff(diffs[cut + 2]) is Outcome.BUFFERED
    # the snapshot taken before the gap cannot be bridged to what is buffered now
    assert not book.on_snapshot(snapshot["lastUpdateId"], snapshot["bids"], snapshot["asks"])
    # a snapshot as of diffs[cut + 1] (the exchange's book then) is bridged by the diffs still buffered
    bids, asks = reference(snapshot, diffs, futures, diffs[cut + 1].last_id)
    as_rest = ([[str(p), str(q)] for p, q in bids.items()], [[str(p), str(q)] for p, q in asks.items()])
    assert book.on_snapshot(diffs[cut + 1].last_id, *as_rest)
    assert book.synced and book.last_update_id == diffs[cut + 2].last_id
    assert levels(book) == reference(snapshot, diffs, futures, diffs[cut + 2].last_id)


def test_a_diff_older_than_the_book_is_stale_and_changes_nothing(data_dir: Path) -> None:
    snapshot, diffs, before = capture(data_dir / "binance-spot-ws" / "btcusdt_20240808.gz")
    book = DepthSync(futures=False)
    for diff in diffs[:before]:
        book.on_diff(diff)
    book.on_snapshot(snapshot["lastUpdateId"], snapshot["bids"], snapshot["asks"])
    for diff in diffs[before : before + 10]:
        book.on_diff(diff)
    state = levels(book), book.last_update_id
    assert book.on_diff(diffs[before + 5]) is Outcome.STALE  # a repeat, as in a connection overlap
    assert (levels(book), book.last_update_id) == state
