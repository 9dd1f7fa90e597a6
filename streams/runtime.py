"""What the worker's stages share: the typed Runtime, and the batching, acknowledgement and crash rules of agents.

Stages (ingest, signals, sink, web) import this module; the composition root (`streams.app`) builds the Runtime
and attaches the stages to it. Nothing here imports a stage.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator
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


async def batches(stream: Any, size: int, within_s: float) -> AsyncIterator[list[Any]]:
    """The stream in batches (`noack_take`) that the caller acknowledges itself (`ack_all`), once processed.

    When the loop ends (the agent cancelled, the worker stopping), the take's own clean-up turns the stream's
    acknowledgements back on and drops its buffering step, while the stream's background drainer goes on pulling
    buffered messages until the stream itself stops: each would be acknowledged unprocessed, and a commit could
    then skip a run of input. Acknowledgements are therefore turned off again after that clean-up: whatever the
    stream still pulls stays uncommitted and is delivered again.
    """
    takes = stream.noack_take(size, within=within_s)
    try:
        async for events in takes:
            yield events
    finally:
        await takes.aclose()
        stream.enable_acks = False


def in_partition_of(event: Any) -> None:
    """Make `event` the current one, so that table writes go to its partition's changelog.

    Batches (`take_events`) do not set the current event per message; table writes must land in the partition
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
