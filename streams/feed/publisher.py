"""The feed's Kafka producer: idempotent, acks from all replicas, and a bounded buffer.

At most `capacity` messages wait for the broker's acknowledgement. When the buffer is full, or aiokafka's own
batch for the partition is, `publish` waits: the websocket is no longer read, so memory stays bounded while
Kafka is away. The producer keeps retrying
for `delivery_timeout_s`; a message not acknowledged by then is counted and makes the feed unhealthy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.feed import metrics
from streams.kafka_security import PRODUCER_BATCH_BYTES

log = logging.getLogger(__name__)


class Publisher:
    """One idempotent producer for the feed's messages, with at most `capacity` awaiting acknowledgement."""

    def __init__(
        self, client_options: dict[str, Any], topic: str, capacity: int, delivery_timeout_s: float = 120.0
    ) -> None:
        """`client_options`: the brokers and security settings (`streams.kafka_security.client_options`)."""
        self.topic = topic
        self.capacity = capacity
        self._producer = AIOKafkaProducer(
            **client_options,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=int(delivery_timeout_s * 1000),
            max_batch_size=PRODUCER_BATCH_BYTES,
        )
        self._in_flight = 0
        self._changed = asyncio.Event()  # set on every acknowledgement
        self.failures = 0
        self.last_error: str | None = None

    async def start(self) -> None:
        """Connect to the brokers."""
        await self._producer.start()

    async def stop(self) -> None:
        """Wait for every acknowledgement, then disconnect."""
        await self.flush()
        await self._producer.stop()

    @property
    def fill(self) -> float:
        """The share of the buffer holding unacknowledged messages."""
        return self._in_flight / self.capacity

    async def publish(self, key: str, value: bytes, topic: str | None = None) -> None:
        """Hand one message to Kafka (`topic`, else the feed's), waiting while the buffer is full; order per key
        is kept."""
        while self._in_flight >= self.capacity:
            self._changed.clear()
            await self._changed.wait()
        self._in_flight += 1
        metrics.BUFFER_FILL.set(self.fill)
        try:
            future = await self._producer.send(topic or self.topic, value, key=key.encode())
        except BaseException:  # cancelled too: aiokafka appends nothing until it returns the future
            self._release()
            raise
        future.add_done_callback(self._delivered)
        metrics.PUBLISHED.inc()

    async def flush(self) -> None:
        """Until every message handed over is acknowledged (or failed)."""
        while self._in_flight:
            self._changed.clear()
            await self._changed.wait()

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failures += 1
            self.last_error = "cancelled" if future.cancelled() else repr(future.exception())
            metrics.PUBLISH_FAILURES.inc()
            log.error("Kafka did not acknowledge a message: %s", self.last_error)
        self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        self._changed.set()
        metrics.BUFFER_FILL.set(self.fill)
