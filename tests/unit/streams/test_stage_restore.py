"""A stored engine state or paper book that does not decode must not stop the signal stage.

Tables are internal topics, and so hostile until checked: a forged or foreign record restored into them would
otherwise raise on every redelivery of the symbol's next bar, stopping the worker each time. The symbol starts
afresh instead (its engine state warms up again, its paper book is flat), and the error is counted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.bars import parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine, SymbolState
from models.registry import load_bundle
from risk.config import RiskConfig
from streams import metrics
from streams.execution import FillCosts, PaperAccount, PaperBroker
from streams.signals.stage import BarEvent, SignalStage


def _restore_errors() -> float:
    return metrics.REGISTRY.get_sample_value("mlrisk_errors_total", {"stage": "restore"}) or 0.0


def _forged_ensemble(engine: SignalEngine, kind: str) -> bytes:
    """A fresh state of the version in service, its ensemble memory forged as `kind` says."""
    forged = engine.new_state("BTCUSDT")
    memory = forged.ensemble
    if kind == "ensemble: two loss sums for three members":
        memory.loss_sums = memory.loss_sums[:2]
    elif kind == "ensemble: a pending probability of 7":
        memory.pending = [(parse_iso_ms("2024-06-03"), 65_000.0, [0.5, 7.0, 0.5])]
    else:
        memory.loss_sums = [1e300, *memory.loss_sums[1:]]
    assert len(engine.members) == 3 and forged.model_version == engine.bundle.version
    return forged.to_bytes()


@pytest.mark.parametrize(
    ("state", "book"),
    [
        (b"not json at all", None),
        (orjson.dumps({"format": "from elsewhere"}), None),
        (b'"a JSON string, as the earlier format was kept, of no state"', None),
        (12345, ["a", "list"]),  # not bytes (the paper book's JSON may restore any type)
        (None, {"book": {"position": ["BTCUSDT", "long", "many"]}}),
        # states that decode, of the version in service, whose ensemble memory does not fit its members
        ("ensemble: two loss sums for three members", None),
        ("ensemble: a pending probability of 7", None),
        ("ensemble: a loss sum no update can reach", None),
    ],
)
def test_a_stored_value_that_does_not_decode_starts_the_symbol_afresh(
    quick_models: Path, klines_dir: Path, state: Any, book: Any
) -> None:
    config = RiskConfig()
    engine = SignalEngine(load_bundle(quick_models), config)
    start = parse_iso_ms("2024-06-03")
    bars = list(load_bars(klines_dir, "BTCUSDT", start, start + 400 * 60_000).bars())
    if isinstance(state, str):
        state = _forged_ensemble(engine, state)
    states: dict[str, Any] = {} if state is None else {"BTCUSDT": state}
    books: dict[str, Any] = {} if book is None else {"BTCUSDT": book}
    broker = PaperBroker(PaperAccount(config.equity_usdt, config.limits), FillCosts(config.taker_fee_rate, 0.0))
    stage = SignalStage(engine, states, books, broker, publish_hold=True)
    signals: list[dict[str, Any]] = []

    def persist(item: BarEvent, symbol: str, kept: SymbolState, paper: Any) -> None:
        states[symbol] = kept.to_bytes()
        books[symbol] = paper.to_dict()

    async def emit(signal: dict[str, Any] | None, executions: list[dict[str, Any]], item: BarEvent) -> None:
        if signal is not None:
            signals.append(signal)

    errors_before = _restore_errors()
    for bar in bars:
        asyncio.run(stage.process([BarEvent(bar, time.time() * 1000, None)], persist, emit))

    forged = (state is not None) + (book is not None)
    assert _restore_errors() == errors_before + forged  # each counted once: what the stage wrote since decodes
    decoded = SymbolState.from_bytes(states["BTCUSDT"])
    assert decoded.last_close_time == bars[-1].close_time
    # started afresh: warmed up on these bars alone, then decided each bar after the warm-up
    assert 0 < len(signals) < len(bars)
    assert signals[-1]["bar_close_time"] == bars[-1].close_time
