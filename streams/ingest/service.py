"""The ingest loop: `market-data` in batches → bars, dead letters and re-keyed messages; bar state in its own topic.

Ingest is the hot path (every trade of every symbol), so it reads with its own consumer in batches of thousands
instead of Faust's per-message stream. Its guarantees:

- Each symbol's bar state is written once per batch to a compacted topic (`<app>-ingest-state`), in the
  partition of the symbol's input, together with the offset of the last message it reflects. A worker that is
  assigned a partition first restores the states of that partition from the topic.
- A batch's bars, dead letters and re-keyed messages are acknowledged by the broker before its states are
  written, and the states before its offsets are committed. A message at or below its symbol's recorded offset
  has already been applied and is skipped when it is delivered again (after a crash, or a commit lost to a
  rebalance): state is never applied twice and its bars never published twice. A crash between a bar's
  acknowledgement and its state write publishes that bar again, which the signal stage recognises.
- A stop or a rebalance waits for the batch in hand: partitions change hands between batches only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from mode import Service

from streams import metrics
from streams.backoff import Backoff
from streams.config import Settings
from streams.health import Progress, healthy, stalled
from streams.ingest.events import BadEvent
from streams.ingest.rules import CONTROL_HEADER, Ingest, dead_letter, dead_letter_key, wall_ms
from streams.kafka_security import PRODUCER_BATCH_BYTES, client_options
from streams.serialization import dumps, loads

log = logging.getLogger("mlrisk.ingest")

BATCH_MAX = 5_000  # messages per batch
POLL_MS = 50  # how long a poll waits for messages when none are buffered
IDLE_FLUSH_MS = 10_000  # a symbol quiet this long (wall clock) gets its finished minutes closed
IDLE_CHECK_MS = 1_000  # how often quiet symbols are looked for
COMMIT_EVERY_MS = 500  # offsets are committed at most this often, and on every stop and rebalance
STOP_GRACE_S = 15.0  # a stop waits this long for the batch in hand
# refusals that no retry cures: the message itself is the problem
REFUSED = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
)


def state_topic(settings: Settings) -> str:
    return f"{settings.faust_app_id}-ingest-state"


def ingest_group(settings: Settings) -> str:
    return f"{settings.faust_app_id}-ingest"


@dataclass(slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (a forgotten symbol's state)
    partition: int | None = None
    # what to send instead when the broker refuses this for good (too large, invalid); made only then
    fallback: Callable[[], Outgoing] | None = None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.service.release(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            await self.service.restore(set(assigned))
        except Exception as error:  # aiokafka logs and swallows it: health must say so
            self.service.restore_failure = repr(error)[:300]
            metrics.ERRORS.labels("restore").inc()
            raise
        self.service.restore_failure = None


class IngestService(Service):
    """Runs the ingest loop beside the Faust app; `ingest` holds the rules and the per-symbol market views."""

    def __init__(
        self, settings: Settings, ingest: Ingest, crash: Callable[[BaseException], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.ingest = ingest
        self.crash_worker = crash
        self.states: dict[str, dict[str, Any]] = ingest.bar_states  # symbol → SymbolBars as a dict
        self.applied: dict[str, tuple[int, int]] = {}  # symbol → (partition, offset of the last applied message)
        self.owned: set[int] = set()  # market-data partitions restored and owned
        self.partition_of: dict[str, int] = {}  # where each symbol's input was last seen
        self.lock = asyncio.Lock()  # one batch, restore or release at a time
        self.generation = 0  # moves on with every restore and release
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.stopping = False
        self.last_idle_check = 0
        self.uncommitted: dict[TopicPartition, int] = {}  # offsets of batches applied and recorded
        self.last_commit_ms = 0
        self.loop_progress = Progress()  # the loop came round (a poll, a batch)
        self.publishing = Progress()  # sends acknowledged, or failing since
        self.restore_failure: str | None = None  # aiokafka logs and swallows a listener's error: kept for health

    async def on_start(self) -> None:
        kafka = client_options(self.settings)
        self.producer = AIOKafkaProducer(
            **kafka, acks="all", enable_idempotence=True, linger_ms=2, max_batch_size=PRODUCER_BATCH_BYTES
        )
        self.consumer = AIOKafkaConsumer(
            **kafka,
            group_id=ingest_group(self.settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(max(1.0, self.settings.session_timeout_s / 5) * 1000),
            max_partition_fetch_bytes=4 * 1_048_576,
        )
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.settings.market_data_topic], listener=_Rebalance(self))
        self.loop_task = asyncio.ensure_future(self.run())

    async def on_stop(self) -> None:
        self.stopping = True
        if self.loop_task is not None:
            done, _ = await asyncio.wait({self.loop_task}, timeout=STOP_GRACE_S)
            if not done:
                self.loop_task.cancel()
        if self.consumer is not None:
            await self.commit()
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    def health(self, now: float, stall_s: float) -> dict[str, Any]:
        """Stalled when the loop has ended or stands still, publication has failed for `stall_s`, or restoring
        assigned partitions failed (their input would be read again and again, never applied)."""
        detail = {"owned_partitions": sorted(self.owned), "last_batch_s_ago": round(self.loop_progress.idle_s(now), 1)}
        if self.loop_task is None or self.loop_task.done():
            return stalled("the ingest loop is not running", **detail)
        if self.restore_failure is not None:
            return stalled(f"restoring assigned partitions failed: {self.restore_failure}", **detail)
        if self.publishing.failing_s(now) > stall_s:
            return stalled(
                f"publishing has failed for {self.publishing.failing_s(now):.0f} s: {self.publishing.failure}", **detail
            )
        if self.loop_progress.idle_s(now) > stall_s:
            return stalled(f"no batch for {self.loop_progress.idle_s(now):.0f} s", **detail)
        return healthy(**detail)

    async def run(self) -> None:
        assert self.consumer is not None
        try:
            while not self.stopping:
                generation = self.generation
                # not under the lock: a poll waits out a rebalance, whose callbacks take the lock
                records = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=BATCH_MAX)
                async with self.lock:
                    if generation == self.generation:
                        await self.process(records)
                    else:  # polled across a rebalance: read again, under the new ownership
                        self.rewind(records)
                self.loop_progress.moved()
        except Exception as error:
            log.critical(
                "ingest failed; stopping the worker so that it resumes from the recorded state", exc_info=error
            )
            metrics.ERRORS.labels("ingest").inc()
            await self.crash_worker(error)

    async def process(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Apply one batch, publish what it produced, record the states, commit."""
        assert self.consumer is not None
        ingest, settings = self.ingest, self.settings
        out: list[Outgoing] = []
        sent: list[asyncio.Future[Any]] = []
        last: dict[str, tuple[int, int]] = {}
        commits: dict[TopicPartition, int] = {}
        received = wall_ms()
        for tp, messages in records.items():
            if tp.partition not in self.owned:  # fetched before its state was restored: read it again later
                self.rewind({tp: messages})
                continue
            commits[tp] = messages[-1].offset + 1
            for message in messages:
                name = None if message.key is None else message.key.decode("utf-8", "replace")
                if name is not None:
                    applied = self.applied.get(name)
                    if applied is not None and applied[0] == tp.partition and message.offset <= applied[1]:
                        continue  # applied before a crash or a rebalance: its bars are already out
                if message.headers and any(header == CONTROL_HEADER for header, _ in message.headers):
                    continue  # a control message of an older version
                symbol = self.apply(message, name, received, out)
                if symbol is not None:
                    last[symbol] = (tp.partition, message.offset)
                if len(out) > len(sent):  # on its way at once: a bar's latency does not wait for the batch
                    sent += [await self.send(item) for item in out[len(sent) :]]
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                max(0, (self.consumer.highwater(tp) or 0) - commits[tp])
            )
        if received - self.last_idle_check >= IDLE_CHECK_MS:
            self.last_idle_check = received
            self.flush_quiet(received, out)
            sent += [await self.send(item) for item in out[len(sent) :]]
        await self.settle(out, sent)  # bars, dead letters, re-keyed: acknowledged before the states say so
        states = []
        for symbol, state in ingest.take_dirty().items():
            partition, offset = last.get(symbol) or self.applied[symbol]
            data = state.to_dict()
            self.states[symbol] = data
            self.applied[symbol] = (partition, offset)
            self.partition_of[symbol] = partition
            states.append(
                Outgoing(
                    state_topic(settings),
                    symbol.encode(),
                    dumps({"state": data, "partition": partition, "offset": offset}),
                    partition,
                )
            )
        for symbol in ingest.take_evicted():  # a tombstone: a restore must not bring an evicted symbol back
            owner = self.applied.pop(symbol, None)
            self.partition_of.pop(symbol, None)
            if owner is not None:
                states.append(Outgoing(state_topic(settings), symbol.encode(), None, owner[0]))
        await self.settle(states, [await self.send(item) for item in states])
        self.uncommitted.update(commits)
        if received - self.last_commit_ms >= COMMIT_EVERY_MS:
            await self.commit()

    async def commit(self) -> None:
        """Commit the offsets of the batches whose states are written. Not every batch: a redelivered message is
        skipped by its symbol's recorded offset anyway, and a commit costs a round trip on the hot path."""
        assert self.consumer is not None
        offsets, self.uncommitted = self.uncommitted, {}
        self.last_commit_ms = wall_ms()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as error:  # a rebalance under way: the recorded offsets make the redelivery harmless
            log.warning("committing ingest offsets failed (%r); redelivered messages will be skipped", error)

    def rewind(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Put the read position back to the first of `records`, for the partitions still assigned."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        for tp, messages in records.items():
            if tp in assigned and messages:
                self.consumer.seek(tp, messages[0].offset)

    def apply(self, message: Any, name: str | None, received: int, out: list[Outgoing]) -> str | None:
        """One message (`name`: its key, decoded); the symbol whose bar state it changed, if any."""
        settings = self.settings
        try:
            result = self.ingest.handle(
                message.value, message.key, message.topic, message.partition, message.offset, received
            )
        except Exception as exc:  # a bug must not stop ingest: park the message with the reason
            log.exception("ingest failed on %s[%s]@%s", message.topic, message.partition, message.offset)
            metrics.ERRORS.labels("ingest").inc()
            metrics.EVENTS_REJECTED.labels("internal_error").inc()
            out.append(self.parked(message, BadEvent("internal_error", repr(exc)), received))
            return None
        if result.dead_letter is not None:
            out.append(
                Outgoing(
                    settings.dlq_topic,
                    dead_letter_key(message.key),
                    result.dead_letter,
                    fallback=lambda: self.parked(
                        message, BadEvent("dlq_refused", "the dead letter was refused"), received, keep_raw=False
                    ),
                )
            )
            return None
        if result.rekey_symbol is not None:
            out.append(
                Outgoing(
                    settings.market_data_topic,
                    result.rekey_symbol.encode(),
                    message.value,
                    fallback=lambda: self.parked(
                        message, BadEvent("rekey_refused", "re-keying it was refused"), received
                    ),
                )
            )
            return None
        symbol = name  # a message that is neither parked nor re-keyed is keyed by its symbol
        assert symbol is not None
        if result.bars:
            self.publish(symbol, result.bars, received, out)
        return symbol if result.state_changed else None

    def parked(self, message: Any, error: BadEvent, received: int, keep_raw: bool = True) -> Outgoing:
        """A dead letter for `message`, falling back to one without the original bytes if the broker refuses it."""
        record = Outgoing(
            self.settings.dlq_topic,
            dead_letter_key(message.key),
            dead_letter(error, message.topic, message.partition, message.offset, message.value, received, keep_raw),
        )
        if keep_raw:
            record.fallback = lambda: self.parked(message, error, received, keep_raw=False)
        return record

    def publish(self, symbol: str, bars: list[Any], received: int, out: list[Outgoing]) -> None:
        view = self.ingest.views.get(symbol)
        market = view.snapshot() if view is not None else {}
        for bar in bars:
            out.append(
                Outgoing(
                    self.settings.bars_topic,
                    symbol.encode(),
                    dumps({**bar.to_dict(), "received_ms": received, "market": market}),
                )
            )

    def flush_quiet(self, now: int, out: list[Outgoing]) -> None:
        """Close the finished minutes of symbols whose feed went quiet."""
        for symbol, view in list(self.ingest.views.items()):
            owner = self.applied.get(symbol)
            if owner is None or owner[0] not in self.owned:
                continue
            if now - view.last_event_wall_ms >= IDLE_FLUSH_MS and self.ingest.has_open_bars(symbol):
                bars = self.ingest.flush(symbol, now)
                if bars:
                    self.publish(symbol, bars, now, out)

    async def send(self, item: Outgoing) -> asyncio.Future[Any]:
        """Hand `item` to the producer; a refusal before it leaves (too large, ...) comes back as a failed
        future, as a refusal by the broker does, for `settle` to deal with per message."""
        assert self.producer is not None
        try:
            return await self.producer.send(item.topic, item.value, key=item.key, partition=item.partition)
        except KafkaError as error:
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(error)
            return refused

    async def settle(self, items: list[Outgoing], futures: list[asyncio.Future[Any]], max_delay_s: float = 5.0) -> None:
        """Wait for every acknowledgement, sending what failed again with backoff until it is through. A message
        the broker refuses for good goes out as its fallback (a dead letter without the original bytes), or is
        dropped with an error if it has none: one message never stops ingest."""
        backoff = Backoff(first_s=0.1, most_s=max_delay_s)
        while items:
            results = await asyncio.gather(*futures, return_exceptions=True)
            retry: list[Outgoing] = []
            transient: list[BaseException] = []
            for item, result in zip(items, results, strict=True):
                if not isinstance(result, Exception):
                    continue
                if not isinstance(result, REFUSED):  # the broker away, a timeout: it will take it later
                    retry.append(item)
                    transient.append(result)
                    continue
                metrics.DLQ_SEND_FAILURES.labels(item.topic).inc()
                if item.fallback is not None:
                    log.error("the broker refused a message for %s (%r); sending its fallback", item.topic, result)
                    retry.append(item.fallback())
                else:
                    metrics.ERRORS.labels("publish").inc()
                    log.error("the broker refused a message for %s (%r); dropped", item.topic, result)
            if transient:
                self.publishing.failed(repr(transient[0]))
                metrics.ERRORS.labels("publish").inc()
                await backoff.wait(log, "%d sends failed (%r)", len(transient), transient[0])
            items = retry
            futures = [await self.send(item) for item in retry]
        self.publishing.moved()

    async def restore(self, assigned: set[TopicPartition]) -> None:
        """Load the bar states of newly assigned partitions from the state topic, then own them."""
        partitions = {tp.partition for tp in assigned if tp.topic == self.settings.market_data_topic}
        async with self.lock:
            self.generation += 1
            new = partitions - self.owned
            for symbol, partition in list(self.partition_of.items()):
                if partition not in partitions:  # another worker's now: its market view goes too
                    self.ingest.views.pop(symbol, None)
                    del self.partition_of[symbol]
            if not new:
                return
            topic = state_topic(self.settings)
            reader = AIOKafkaConsumer(**client_options(self.settings), enable_auto_commit=False)
            await reader.start()
            try:
                tps = [TopicPartition(topic, p) for p in sorted(new)]
                reader.assign(tps)
                await reader.seek_to_beginning(*tps)
                ends = await reader.end_offsets(tps)
                waiting = {tp for tp in tps if ends[tp] > 0}
                restored = 0
                while waiting:
                    batch = await reader.getmany(*waiting, timeout_ms=1000)
                    for tp, messages in batch.items():
                        for message in messages:
                            symbol = message.key.decode()
                            if message.value is None:  # evicted
                                self.states.pop(symbol, None)
                                self.applied.pop(symbol, None)
                                self.partition_of.pop(symbol, None)
                                continue
                            record = loads(message.value)
                            self.states[symbol] = record["state"]
                            self.applied[symbol] = (record["partition"], record["offset"])
                            self.partition_of[symbol] = record["partition"]
                            restored += 1
                        if messages and messages[-1].offset + 1 >= ends[tp]:
                            waiting.discard(tp)
            finally:
                await reader.stop()
            self.owned |= new
            log.info("ingest owns partitions %s (%d state records read)", sorted(self.owned), restored)

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Forget the bar states of revoked partitions once the batch in hand is through (the lock); they are
        read again from the topic if the partitions come back. Market views stay until the assignment is known."""
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.market_data_topic}
        async with self.lock:
            await self.commit()
            self.generation += 1
            self.owned -= partitions
            for partition in partitions:  # another worker reports these now
                with contextlib.suppress(KeyError):
                    metrics.CONSUMER_LAG.remove(self.settings.market_data_topic, str(partition))
            for symbol, (partition, _) in list(self.applied.items()):
                if partition in partitions:
                    del self.applied[symbol]
                    self.states.pop(symbol, None)
