"""Two changes to faust-streaming: its recovery seeks the stream partitions to their committed offsets before
resuming them, and its consumer hands a message to its channels without four tasks when nothing waits.

Recovery.

After a restart or a rebalance, Faust's `Recovery` resumes the assigned stream partitions and only then awaits the
seek to their committed offsets (in `on_recovery_completed` and `_resume_streams`). The fetcher is already
running at that point (it read the changelogs), so it delivers messages from the partitions in the meantime; when
the seek lands it moves Faust's read offset back under them, and messages fetched in that window are dropped as
already read: a run of input never processed, found as bars missing after a restart mid-replay. The same class of
race was fixed upstream for the table-less path (faust-streaming issue 216); this applies the order to both paths.

The two methods below are Faust's own, with the seek moved before the resume.

Delivery. Faust's consumer loop (`Consumer._drain_messages`) hands each fetched message to its channels through
`wait_first(callback(message), suspend_flow.wait())`, so that a rebalance suspending the flow (or the consumer
stopping) can abandon a delivery that waits, say on a full stream buffer. That makes four tasks and an
`asyncio.wait` for every message of the bars, signals and executions topics, though the delivery nearly always
completes without waiting; in a burst of 200 bars on 2 cores the signal stage then received them in 10 or 11
clumps, each decided as a batch of its own, where it now gets them in about 3. `_drain_messages` below is Faust's
own loop, except that a delivery is first run up to its first wait; one that completes there is done, and only
one that waits (or one begun while the flow is suspended or the consumer stopping) goes through `wait_first`,
resumed where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import faust
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_FETCHING, Consumer

log = logging.getLogger("mlrisk")


async def _seek_then_resume(recovery: Any, assignment: set[Any]) -> None:
    consumer = recovery.app.consumer
    streams = {tp for tp in assignment if not recovery._is_changelog_tp(tp)}
    consumer.pause_partitions(streams)  # nothing of them is delivered until the seek has landed
    recovery.log.info("Seek stream partitions to committed offsets.")
    await recovery._wait(consumer.perform_seek(), timeout=recovery.app.conf.broker_request_timeout)
    consumer.resume_partitions(streams)


async def _finish(recovery: Any) -> None:
    app = recovery.app
    recovery.completed.set()
    app.flow_control.resume()
    app.consumer.resume_flow()
    await cast(Any, app)._fetcher.maybe_start()
    recovery.tables.on_actives_ready()


async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """Faust's `Recovery.on_recovery_completed`, seeking before resuming."""
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callbacks:
        await asyncio.wait(callbacks)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(
            "Recovery rebalancing again app id %s param %s", self.app.consumer_generation_id, generation_id
        )
        return
    if assignment:
        await _seek_then_resume(self, assignment)
    await _finish(self)
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _resume_streams(self: Any, generation_id: int = 0) -> None:
    """Faust's `Recovery._resume_streams`, seeking before resuming."""
    await self.app.on_rebalance_complete.send()
    assignment = self.app.consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        await _seek_then_resume(self, assignment)
    else:
        self.log.info("Resuming streams with empty assignment")
    self.log.info("Resuming flow...")
    await _finish(self)
    self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


class _Resumed:
    """The rest of a coroutine that has already run up to `first` (what it yielded to the event loop): awaiting
    this drives it on from there, as `yield from` would have."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Any:
        coro, value = self.coro, self.first
        while True:
            try:
                received = yield value
            except BaseException as error:  # cancelled, or thrown in: the coroutine sees it where it waits
                try:
                    value = coro.throw(error)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(received)
                except StopIteration as stop:
                    return stop.value


async def deliver(consumer: Any, callback: Any, message: Any) -> None:
    """`await consumer.wait_first(callback(message), consumer.suspend_flow.wait())`, without its tasks when the
    delivery completes before it first waits and the flow is neither suspended nor stopping."""
    coro = callback(message)
    if not (consumer.suspend_flow.is_set() or consumer._stopped.is_set() or consumer._crashed.is_set()):
        try:
            first = coro.send(None)
        except StopIteration:
            return
        coro = _Resumed(coro, first)
    await consumer.wait_first(coro, consumer.suspend_flow.wait())


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover (Faust's loop; `deliver` tested)
    """Faust's `Consumer._drain_messages` (faust-streaming 0.15), delivering through `deliver`."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = cast(Any, getmany(timeout=1.0))

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await deliver(self, callback, message)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


DRAIN_LOOP_OF = "0.15."  # the faust-streaming releases whose consumer loop `_drain_messages` copies


def apply() -> None:
    cast(Any, Recovery).on_recovery_completed = on_recovery_completed
    cast(Any, Recovery)._resume_streams = _resume_streams
    if faust.__version__.startswith(DRAIN_LOOP_OF):
        cast(Any, Consumer)._drain_messages = _drain_messages
    else:  # another release's loop may differ: keep Faust's own
        log.info("faust-streaming %s: its own consumer loop is kept", faust.__version__)
