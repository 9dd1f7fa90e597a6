"""What the worker's stages share: the typed Runtime, and the batching, acknowledgement and crash rules of agents.

Stages (ingest, signals, sink, web) import this module; the composition root (`streams.app`) builds the Runtime
and attaches the stages to it. Nothing here imports a stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faust
from faust.streams import _current_event

from streams import metrics
from streams.config import Settings
from streams.health import HealthReport
from streams.ingest.rules import Ingest

if TYPE_CHECKING:
    from models.engine import SignalEngine
    from models.registry import ModelBundle
    from streams.execution import PaperBroker
    from streams.signals.model_switch import ModelSwitch
    from streams.signals.stage import SignalStage
    from streams.sink.writer import Sink

log = logging.getLogger("mlrisk")

Pause = Callable[[], Awaitable[None]]  # awaited between the pieces of work that can wait (`Activity.pauses`)
IDLE_WAKE_S = 1.0  # how often an idle batched stream looks up to see whether the worker is stopping


async def ack_all(stream: Any, events: list[Any]) -> None:
    """Acknowledge a processed batch. Batches come from `batches`: a batch cut short (the worker stopping)
    is never acknowledged, so its messages are delivered again instead of being committed unprocessed."""
    for event in events:
        await stream.ack(event)


async def stop_on_unexpected(app: faust.App, stage: str, error: BaseException) -> None:
    """An unexpected error mid-batch stops the worker instead of letting the agent restart in place: a restart
    in place would continue after the batch's unprocessed messages, and state would move on without them.
    A new worker resumes from the committed offsets."""
    log.critical(
        "%s stage failed; stopping the worker so that it resumes from committed offsets", stage, exc_info=error
    )
    metrics.ERRORS.labels(stage).inc()
    await app.crash(error)


class Activity:
    """Whether a stage has events in hand (buffered for its next batch, or a batch being processed).

    Work that can wait (the sink's copies, the monitors' measurements) awaits a pause before each piece, so that
    a minute boundary's bars do not queue behind it on the worker's one thread. The pauses of one job wait at
    most `at_most_s` together (`pauses`), so that a stage that is never idle delays that work but never stops it.
    """

    def __init__(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        self.yielded_s = 0.0  # how long waiting work has waited for the stage, in all

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def began(self) -> None:
        self._idle.clear()

    def ended(self) -> None:
        self._idle.set()

    async def yield_to(self, at_most_s: float) -> None:
        """Return once the stage has nothing in hand, or after `at_most_s`."""
        if self._idle.is_set() or at_most_s <= 0:
            return
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), at_most_s)
        waited = time.perf_counter() - started
        self.yielded_s += waited
        metrics.YIELDED_SECONDS.inc(waited)

    def pauses(self, at_most_s: float) -> Pause:
        """A pause for each piece of one job: each yields to the stage, all of them together at most
        `at_most_s`."""
        deadline = time.perf_counter() + at_most_s

        async def pause() -> None:
            await self.yield_to(deadline - time.perf_counter())

        return pause


async def batches(
    stream: Any, size: int, within_s: float, quiet_s: float | None = None, activity: Activity | None = None
) -> AsyncIterator[list[Any]]:
    """The stream in batches of at most `size` events, which the caller acknowledges itself (`ack_all`) once
    processed.

    A batch goes when it is full, or `within_s` after the stage looked for it and found events (an idle stage:
    after the first event's arrival). With `quiet_s`, it goes once `quiet_s` has passed since the newest event
    was buffered (at once, if that was longer ago), and within `within_s` all the same: a lone event waits
    `quiet_s` for company, events that keep coming closer together than that are taken together, and what came
    while the last batch was processed goes without waiting for more. (Waiting a fixed 3 ms after every look,
    the signal stage waited seven or eight times in a burst of 200 bars for bars that were not coming: they
    reach the buffer in clumps while a batch awaits its inference.)

    The stream is drained in the background by Faust's passive drainer while the caller processes a batch, so
    that what arrives meanwhile is already buffered when the next batch is looked for; the drainer stops only at
    a full buffer. (Faust's `noack_take` holds the drainer back while a batch is processed, so the next batch
    held only what the drainer could pull in `within_s` afterwards: on 2 slow cores, a burst of 200 bars came
    out in 19 batches instead of 3, each paying a batch's fixed costs.)

    Acknowledgements stay off after the loop ends (the agent cancelled, the worker stopping): whatever the
    drainer still pulls, and whatever the buffer holds, stays uncommitted and is delivered again.

    With `activity`, the stream's stage is marked busy from the first event buffered until a processed batch
    leaves the buffer empty.
    """
    buffer: list[Any] = []
    last_added = 0.0  # the event loop's time when the newest event was buffered
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()  # set when the buffer gains its first event
    full = asyncio.Event()  # set when the buffer holds `size` events
    room = asyncio.Event()  # set when a full buffer has been taken
    room.set()

    async def add(value: Any) -> Any:
        nonlocal last_added
        event = stream.current_event
        if event is None:
            raise RuntimeError("a batched stream found no current event")
        while len(buffer) >= size:
            room.clear()
            if await stream.wait_for_stopped(room):
                return value  # the worker is stopping: not buffered, not acknowledged, delivered again
        buffer.append(event)
        last_added = loop.time()
        arrived.set()
        if activity is not None:
            activity.began()
        if len(buffer) >= size:
            full.set()
        return value

    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # what Faust's take does to drain the stream in the background
    try:
        while not stream.should_stop:
            if not buffer:
                arrived.clear()
                await stream.wait_for_stopped(arrived, timeout=IDLE_WAKE_S)
                if not buffer:
                    continue
            if len(buffer) < size:
                if quiet_s is None:
                    await stream.wait_for_stopped(full, timeout=within_s)
                else:  # until quiet_s has passed since the newest event, within within_s
                    deadline = loop.time() + within_s
                    while (wait_s := min(last_added + quiet_s, deadline) - loop.time()) > 0:
                        # mode's wait reports a timeout as "stopped" too: the flags say what happened
                        await stream.wait_for_stopped(full, timeout=wait_s)
                        if full.is_set() or stream.should_stop:
                            break
            batch = buffer[:size]
            del buffer[:size]
            full.clear()
            room.set()
            yield batch
            if activity is not None and not buffer:
                activity.ended()
    finally:
        if activity is not None:
            activity.ended()
        stream.enable_acks = False
        stream._processors.remove(add)


def in_partition_of(event: Any) -> None:
    """Make `event` the current one, so that table writes go to its partition's changelog.

    Batches (`batches`) do not set the current event per message; table writes must land in the partition
    of the symbol they belong to, or a rebalance would restore them on the wrong worker.
    """
    _current_event.set(weakref.ref(event))


@dataclass(slots=True)
class Serving:
    """What decisions are made with: set by the pipeline at start-up, and the model fields again on every swap."""

    broker: PaperBroker
    sink: Sink
    switch: ModelSwitch
    engine: SignalEngine | None = None
    stage: SignalStage | None = None
    bundle: ModelBundle | None = None


@dataclass(slots=True)
class Runtime:
    """What the worker's views and services share: the app, its topics and tables, the ingest logic, health, and
    (once the pipeline is attached) what it serves with."""

    settings: Settings
    app: faust.App
    topics: dict[str, Any]
    tables: dict[str, Any]
    ingest: Ingest
    health: HealthReport
    serving: Serving | None = field(default=None)
