"""`mlrisk state show|reset SYMBOL`: one symbol's stream state, read from (or removed from) its compacted topics.

A symbol's state lives in three compacted topics: ingest's bar state (`<app>-ingest-state`), the signal stage's
engine state and the paper book (the Faust tables' changelogs). Should something slip past validation and stick,
`show` says what is kept and `reset` writes tombstones, so that the next worker to own the symbol starts it
afresh. A running worker keeps its own copy in memory and would write it back at its next batch: stop the
workers first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from models.bars import iso_utc
from streams.config import Settings
from streams.ingest.service import state_topic
from streams.kafka_security import client_options
from streams.topics import TABLE_NAMES


@dataclass(slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


def state_topics(settings: Settings) -> list[str]:
    """The compacted topics that hold a symbol's state."""
    return [state_topic(settings), *(f"{settings.faust_app_id}-{table}-changelog" for table in TABLE_NAMES)]


def _keys(symbol: str) -> set[bytes]:
    # ingest writes the symbol's bytes; Faust's tables may write the key as a JSON string
    return {symbol.encode(), orjson.dumps(symbol)}


async def find(settings: Settings, symbol: str) -> list[Record]:
    """The latest live record of `symbol` in each state topic (none where it has none, or a tombstone)."""
    keys = _keys(symbol)
    options = client_options(settings)
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [topic for topic in state_topics(settings) if topic in existing]
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(wanted)} if wanted else {}
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **options)
    await consumer.start()
    latest: dict[str, Record | None] = {}
    try:
        for topic, count in partitions.items():
            tps = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            waiting = {tp for tp in tps if ends[tp] > 0}
            while waiting:
                batch = await consumer.getmany(*waiting, timeout_ms=1_000)
                for tp, messages in batch.items():
                    for message in messages:
                        if message.key in keys:
                            latest[topic] = (
                                None
                                if message.value is None
                                else Record(topic, tp.partition, message.offset, message.key, message.value)
                            )
                    if messages and messages[-1].offset + 1 >= ends[tp]:
                        waiting.discard(tp)
    finally:
        await consumer.stop()
    return [record for record in latest.values() if record is not None]


def describe(records: list[Record]) -> dict[str, Any]:
    """What `show` prints: per topic, where the record is and what it says (the bar state in full, the others by
    size; the engine state is a binary blob of features and model windows)."""
    out: dict[str, Any] = {}
    for record in records:
        entry: dict[str, Any] = {"partition": record.partition, "offset": record.offset, "bytes": len(record.value)}
        if record.topic.endswith("-ingest-state"):
            data = orjson.loads(record.value)
            state = data["state"]
            entry.update(
                applied_offset=data["offset"],
                source=state["source"],
                last_trade_id=state.get("last_trade_id"),
                watermark=_iso(state["watermark_ms"]),
                last_closed_bar=_iso(state["last_closed_open_time"]),
                open_bars=[_iso(row[0]) for row in state["open_bars"]],
            )
        out[record.topic] = entry
    return out


def _iso(epoch_ms: int | None) -> str | None:
    if not epoch_ms:
        return None
    try:
        return iso_utc(epoch_ms)
    except (OverflowError, ValueError, OSError):  # what reset is for: a time no calendar holds
        return str(epoch_ms)


async def reset(settings: Settings, records: list[Record]) -> None:
    """Write a tombstone for each record, to its partition, and wait for the broker to take them."""
    producer = AIOKafkaProducer(acks="all", **client_options(settings))
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(record.topic, None, key=record.key, partition=record.partition)
    finally:
        await producer.stop()
