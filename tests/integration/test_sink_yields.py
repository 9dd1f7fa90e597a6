"""The sink yields to the signal stage: a batch it writes while the stage has bars in hand waits for the stage
between its pieces (at most its bound), then writes every row once, on the real database."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg

from streams.runtime import Activity
from streams.sink.writer import PIECE, Sink
from tests.shapes import signal_like

SIGNALS = 3 * PIECE + 5  # more than one piece


def _stored(url: str, marker: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM actionable_trade_signals WHERE metadata->>'model_version' = %s", (marker,)
        ).fetchone()
    return int(row[0]) if row else 0


async def _write_while_busy(url: str, marker: str, at_most_s: float, busy_for_s: float | None) -> dict[str, float]:
    """Write a batch while the stage is busy; the stage ends its work after `busy_for_s` (never, if None). Returns
    how long the write took, how many rows were stored halfway through the stage's work, and the wait counted."""
    signals = [signal_like(model_version=marker) for _ in range(SIGNALS)]  # each with an id of its own
    sink = Sink(url)
    await sink.open()
    activity = Activity()
    activity.began()
    out: dict[str, float] = {}
    try:
        started = time.monotonic()
        write = asyncio.create_task(sink.write_signals(signals, pause=activity.pauses(at_most_s)))
        if busy_for_s is not None:
            await asyncio.sleep(busy_for_s / 2)
            out["stored_while_busy"] = await asyncio.to_thread(_stored, url, marker)
            await asyncio.sleep(busy_for_s / 2)
            activity.ended()
        await asyncio.wait_for(write, 60)
        out["took_s"] = time.monotonic() - started
        out["yielded_s"] = activity.yielded_s
    finally:
        await sink.close()
    return out


def test_a_batch_waits_while_the_stage_has_bars_in_hand_then_writes_every_row(database_url: str) -> None:
    marker = uuid.uuid4().hex
    out = asyncio.run(_write_while_busy(database_url, marker, at_most_s=30.0, busy_for_s=1.0))
    assert out["stored_while_busy"] == 0  # nothing written while the stage was busy
    assert 0.9 <= out["took_s"] < 30.0  # released when the stage went idle, long before the bound
    assert _stored(database_url, marker) == SIGNALS


def test_a_stage_that_is_never_idle_delays_a_batch_by_its_bound_and_no_more(database_url: str) -> None:
    marker = uuid.uuid4().hex
    out = asyncio.run(_write_while_busy(database_url, marker, at_most_s=0.5, busy_for_s=None))
    # every piece of the batch (rows, two tables' copies) paused, all of them together for the one bound
    assert 0.45 <= out["yielded_s"] < 1.0
    assert out["took_s"] < 30.0
    assert _stored(database_url, marker) == SIGNALS
