"""A round's signals are on their way to the broker before the stage stores the round's states.

At a minute boundary the last of N signals waits for everything the stage does before it lets the producer run;
storing N engine states (about 30 KB each, through the changelog) is bookkeeping that no subscriber waits for.
The topic here stamps each record with the broker's own append time, so the test reads when the broker had each
signal; the first state stored holds the stage for a known span, and every signal of the round must have reached
the broker within it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from models.bars import parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine, SymbolState
from models.features import WARMUP_BARS
from models.registry import load_bundle
from risk.config import RiskConfig
from streams.execution import FillCosts, PaperAccount, PaperBroker
from streams.signals.stage import BarEvent, SignalStage

from .conftest import REPO_ROOT, consume_all

SYMBOLS = [f"X{i}USDT" for i in range(6)]
HOLD_S = 0.5  # how long the round's first stored state holds the stage


async def _round_then_read(model_dir: Path, kafka: str, topic: str) -> tuple[list[Any], float, float, int]:
    config = RiskConfig()
    engine = SignalEngine(load_bundle(model_dir), config)
    start = parse_iso_ms("2024-06-10")
    warm = WARMUP_BARS + engine.window + 5
    bars = list(load_bars(REPO_ROOT.parent / "shared" / "data", "BTCUSDT", start, start + (warm + 1) * 60_000).bars())
    states: dict[str, Any] = {}
    books: dict[str, Any] = {}
    broker = PaperBroker(PaperAccount(config.equity_usdt, config.limits), FillCosts(config.taker_fee_rate, 0.0))
    stage = SignalStage(engine, states, books, broker, publish_hold=True)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=0, acks="all")
    await producer.start()
    held: list[tuple[float, float]] = []  # (from, to) of the hold, wall clock
    live = False

    def persist(item: BarEvent, symbol: str, state: SymbolState, paper: Any) -> None:
        if live and not held:
            began = time.time()
            time.sleep(HOLD_S)
            held.append((began, time.time()))
        states[symbol] = state.to_bytes()
        books[symbol] = paper.to_dict()

    async def emit(signal: dict[str, Any] | None, executions: list[dict[str, Any]], item: BarEvent) -> None:
        if live and signal is not None:
            await producer.send(topic, signal["signal_id"].encode(), key=item.bar.symbol.encode())

    try:
        for bar in bars[:-1]:  # warm-up, nothing sent
            await stage.process([BarEvent(replace(bar, symbol=s), None, None) for s in SYMBOLS], persist, emit)
        live = True
        round_started = time.time()
        decided = await stage.process(
            [BarEvent(replace(bars[-1], symbol=s), time.time() * 1000, None) for s in SYMBOLS], persist, emit
        )
        await producer.flush()
    finally:
        await producer.stop()
    messages = await consume_all(topic, len(SYMBOLS), timeout_s=60.0, brokers=kafka)
    ((hold_from, hold_to),) = held
    return messages, round_started, hold_to, decided


def test_the_rounds_signals_reach_the_broker_while_its_states_are_stored(model_dir: Path, kafka: str) -> None:
    topic = f"test-sends-first-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topic, 1, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})]
            )
        finally:
            await admin.close()

    asyncio.run(create())
    messages, round_started, hold_to, decided = asyncio.run(_round_then_read(model_dir, kafka, topic))
    assert decided == len(SYMBOLS)
    assert sorted(m.key.decode() for m in messages) == sorted(SYMBOLS)
    assert all(m.timestamp_type == 1 for m in messages)  # the broker's append time, not the producer's
    appended_s = [m.timestamp / 1000 for m in messages]
    # every signal was appended before the hold ended (ms stamps, so a millisecond's slack), none before the round
    assert max(appended_s) < hold_to - 0.001, (appended_s, round_started, hold_to)
    assert min(appended_s) >= round_started - 0.001
