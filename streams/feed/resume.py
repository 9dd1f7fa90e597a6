"""Where a previous run of the feed stopped: the last trade ids it published, read back from `market-data`.

A restarted feed back-fills from there, so a restart loses no trades and publishes none twice. Only the tail of
each partition is read (TAIL_MESSAGES): a symbol whose last trade is older than that starts afresh.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger(__name__)

TAIL_MESSAGES = 20_000  # per partition; at a few thousand messages a second, the last seconds of a busy feed
TRADE_ID_KEYS = {"trade": "t", "aggTrade": "a"}


async def last_trade_ids(client_options: dict[str, Any], topic: str, symbols: set[str]) -> dict[tuple[str, str], int]:
    """(symbol, "trade" | "aggTrade") → the highest id published in the tail of `topic`."""
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic, p["partition"])
        for d in described
        if d.get("topic") == topic
        for p in d.get("partitions", ())
    ]
    found: dict[tuple[str, str], int] = {}
    if not partitions:
        return found
    consumer = AIOKafkaConsumer(**client_options, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - TAIL_MESSAGES))
        remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            if not batch:
                break  # the broker has nothing more to give
            for tp, records in batch.items():
                for record in records:
                    _note(record.value, symbols, found)
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    log.info("resuming after trade ids %s", found)
    return found


def _note(value: bytes | None, symbols: set[str], found: dict[tuple[str, str], int]) -> None:
    try:
        message = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return
    if not isinstance(message, dict) or not isinstance(message.get("stream"), str):
        return
    data = message.get("data")
    symbol, _, channel = message["stream"].partition("@")
    key = TRADE_ID_KEYS.get(channel)
    if key is None or symbol.upper() not in symbols or not isinstance(data, dict):
        return
    trade_id = data.get(key)
    if isinstance(trade_id, int) and not isinstance(trade_id, bool):
        slot = (symbol.upper(), channel)
        found[slot] = max(found.get(slot, trade_id), trade_id)
