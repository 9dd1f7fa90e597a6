"""Garbage on the internal topics and rows the database refuses.

Without these fixes: a bad message on `bars` was decoded outside the signal agent's error handling, so Faust
restarted the agent in place and state moved on without the rest of the batch; the sink agents wrote whatever
they read, and one row the database refused (a price of 1e9 into DECIMAL(15,6)) left its whole batch
unacknowledged for ever, every later signal stuck behind it, while /health said ok.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import psycopg
import pytest

from streams import metrics
from streams.messages import InvalidMessage, check_execution, check_signal, decode_bar
from streams.sink.writer import Sink, execution_row, signal_row
from tests.shapes import signal_like as _signal

BAR = {
    "symbol": "BTCUSDT",
    "open_time": 1_723_161_240_000,
    "open": 61800.3,
    "high": 61839.8,
    "low": 61800.0,
    "close": 61807.8,
    "volume": 125.966,
    "quote_volume": 7_786_000.5,
    "trades": 252,
    "taker_buy_base": 60.1,
    "taker_buy_quote": 3_714_000.2,
    "received_ms": 1_723_161_300_123,
    "market": {"mark_price": 61805.1},
}


def _bar(**changes: Any) -> bytes:
    return orjson.dumps({k: v for k, v in {**BAR, **changes}.items() if v is not ...})


BAD_BARS: list[tuple[str, bytes]] = [
    ("not-json", b"\x00\x01garbage"),
    ("empty", b""),
    ("json-list", b"[1,2,3]"),
    ("missing-close", _bar(close=...)),
    ("price-as-word", _bar(open="cheap")),
    ("price-1e300", _bar(high=1e300)),
    ("price-null-from-NaN", _bar(low=None)),
    ("negative-volume", _bar(volume=-1.0)),
    ("open-time-in-ns", _bar(open_time=1_723_161_240_000 * 10**6)),
    ("open-time-before-2009", _bar(open_time=60_000)),
    ("open-time-off-the-minute", _bar(open_time=1_723_161_240_001)),
    ("high-below-low", _bar(high=61000.0)),
    ("fullwidth-symbol", _bar(symbol="ＢＴＣＵＳＤＴ")),
    ("overlong-symbol", _bar(symbol="B" * 5_000)),
    ("trades-2**40", _bar(trades=2**40)),
    ("market-not-object", _bar(market=[1])),
    ("deep-nesting", b'{"symbol":' + b"[" * 5_000 + b"]" * 5_000 + b"}"),
    ("300KB", _bar(market={"pad": "x" * 300_000})),
]


@pytest.mark.parametrize(("case", "raw"), BAD_BARS, ids=[c for c, _ in BAD_BARS])
def test_a_bad_bar_is_refused_with_a_reason(case: str, raw: bytes) -> None:
    """Each of these reached `Bar.from_dict` outside the agent's error handling, or went on into the engine."""
    with pytest.raises(InvalidMessage) as caught:
        decode_bar(raw)
    assert caught.value.reason in ("not_json", "invalid", "empty", "too_large")
    assert len(str(caught.value)) <= 256


def test_a_bar_as_ingest_writes_it_decodes_to_the_same_bar() -> None:
    bar = decode_bar(_bar())
    assert bar.to_bar().to_dict() == {k: v for k, v in BAR.items() if k not in ("received_ms", "market")}
    assert bar.market == {"mark_price": 61805.1} and bar.received_ms == 1_723_161_300_123


BAD_SIGNALS: list[tuple[str, dict[str, Any]]] = [
    ("unknown-signal-type", _signal(signal_type="moon")),
    ("leverage-500", _signal(recommended_leverage=500)),
    ("confidence-1.5", _signal(confidence_score=1.5)),
    ("risk-score-string", _signal(risk_score="high")),
    ("stop-1e9", _signal(stop_loss_price=1e9)),
    ("symbol-lookalike", _signal(symbol="BTCUSDТ")),
    ("missing-signal-id", {k: v for k, v in _signal().items() if k != "signal_id"}),
    ("bar-close-in-2200", _signal(bar_close_time=7_258_118_400_000)),
]


@pytest.mark.parametrize(("case", "signal"), BAD_SIGNALS, ids=[c for c, _ in BAD_SIGNALS])
def test_a_bad_signal_is_refused_before_the_sink(case: str, signal: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage):
        check_signal(orjson.dumps(signal))


def test_a_genuine_signal_and_execution_pass() -> None:
    check_signal(orjson.dumps(_signal()))
    check_signal(
        orjson.dumps(
            _signal(
                signal_type="hold",
                recommended_leverage=None,
                position_size_usdt=None,
                quantity=None,
                stop_loss_price=None,
                take_profit_price=None,
                risk_reward_ratio=None,
                liquidation_price=None,
            )
        )
    )
    check_execution(
        orjson.dumps(
            {
                "timestamp": "2024-08-08T23:55:00Z",
                "signal_id": str(uuid.uuid4()),
                "symbol": "BTCUSDT",
                "execution_status": "executed",
                "execution_price": 61800.0,
                "execution_size": 488.0,
                "execution_leverage": 5,
                "actual_stop_loss": 61500.0,
                "actual_take_profit": 62300.0,
                "execution_time_ms": 0,
                "error_message": None,
                "metadata": {"signal_type": "long"},
            }
        )
    )
    with pytest.raises(InvalidMessage):
        check_execution(
            orjson.dumps(
                {
                    "timestamp": "2024-08-08T23:55:00Z",
                    "signal_id": "x",
                    "symbol": "BTCUSDT",
                    "execution_status": "teleported",
                }
            )
        )


def _quarantined(url: str, marker: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, error FROM sink_quarantine WHERE row_data LIKE %s", (f"%{marker}%",)
        ).fetchall()


def _stored(url: str, ids: list[str]) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT signal_id::text FROM actionable_trade_signals WHERE signal_id = ANY(%s::uuid[])", (ids,)
        ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize(
    ("case", "bad"),
    [
        ("stop-loss-1e9-overflows-decimal-15-6", {"stop_loss_price": 1e9}),
        ("position-size-1e14-overflows-decimal-15-2", {"position_size_usdt": 1e14}),
        ("signal-id-not-a-uuid", {"signal_id": "not-a-uuid"}),
        ("risk-level-21-characters", {"ml_prediction": "u" * 21}),
        ("nul-character-in-text", {"ml_prediction": "up\x00"}),
    ],
)
def test_rows_the_database_refuses_are_quarantined_and_the_rest_of_the_batch_is_written(
    database_url: str, case: str, bad: dict[str, Any]
) -> None:
    """One refused row used to leave its batch unacknowledged for ever (only connection errors were retried)."""
    marker = uuid.uuid4().hex
    signals = [_signal(model_version=marker) for _ in range(40)]
    signals[17].update(bad)
    before = metrics.SINK_QUARANTINED.labels("actionable_trade_signals")._value.get()

    async def write() -> None:
        sink = Sink(database_url)
        await sink.open()
        try:
            await asyncio.wait_for(sink.write("actionable_trade_signals", [signal_row(s) for s in signals]), 60)
        finally:
            await sink.close()

    started = time.monotonic()
    asyncio.run(write())
    assert time.monotonic() - started < 60
    good = [s["signal_id"] for i, s in enumerate(signals) if i != 17]
    assert _stored(database_url, good) == set(good)
    quarantined = _quarantined(database_url, marker)
    assert len(quarantined) == 1 and quarantined[0][0] == "actionable_trade_signals"
    assert metrics.SINK_QUARANTINED.labels("actionable_trade_signals")._value.get() == before + 1


def test_an_execution_log_without_a_signal_id_is_quarantined_not_retried_for_ever(database_url: str) -> None:
    """The paper broker logs a close with signal_id "" when it lost the opening signal; "" is not a UUID."""
    marker = uuid.uuid4().hex
    logs = [
        {
            "timestamp": "2024-08-08T23:55:00Z",
            "signal_id": sid,
            "symbol": "QUARUSDT",
            "execution_status": "closed",
            "execution_price": 61800.0,
            "execution_size": 10.0,
            "execution_time_ms": 0,
            "metadata": {"marker": marker},
        }
        for sid in (str(uuid.uuid4()), "")
    ]

    async def write() -> None:
        sink = Sink(database_url)
        await sink.open()
        try:
            await asyncio.wait_for(sink.write("signal_execution_logs", [execution_row(e) for e in logs]), 60)
        finally:
            await sink.close()

    asyncio.run(write())
    assert [t for t, _ in _quarantined(database_url, marker)] == ["signal_execution_logs"]
