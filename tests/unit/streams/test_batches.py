"""`batches`: what arrives while a batch is processed is in the next batch; every event once, in order."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import pytest

from streams import metrics
from streams.runtime import Activity, batches

EVENTS = 120


async def run(take: str) -> list[list[int]]:
    """Events arrive one a millisecond on a Faust stream whose own per-event step costs 1 ms (a slow host's
    Faust); each batch is processed for 30 ms, awaiting (the inference thread, the producer)."""
    app = faust.App(f"test-batches-{take}", broker="kafka://localhost:9092", store="memory://", web_enabled=False)
    app.flow_control.resume()
    channel = app.channel()
    stream = app.stream(channel)

    def slow_step(value: Any) -> Any:
        time.sleep(0.001)
        return value

    stream.add_processor(slow_step)

    async def feed() -> None:
        for i in range(EVENTS):
            await channel.send(value=i)
            await asyncio.sleep(0.001)

    feeder = asyncio.create_task(feed())
    sizes: list[list[int]] = []
    source = batches(stream, 256, 0.003) if take == "batches" else stream.noack_take(256, 0.003)
    async for events in source:
        sizes.append([event.value for event in events])
        await asyncio.sleep(0.03)
        if sum(len(b) for b in sizes) >= EVENTS:
            break
    await feeder
    return sizes


def test_what_arrives_during_a_batch_is_in_the_next_one() -> None:
    taken = asyncio.run(asyncio.wait_for(run("batches"), timeout=60))
    faust_taken = asyncio.run(asyncio.wait_for(run("faust"), timeout=60))
    for batches_taken in (taken, faust_taken):
        assert [value for batch in batches_taken for value in batch] == list(range(EVENTS))  # each once, in order
    # Faust's own take holds its drainer back while a batch is processed, then gets what it drains in 3 ms: a
    # few events a batch at 1 ms an event, whatever the host. Here the drainer runs during the 30 ms of
    # processing, so a batch holds what arrived meanwhile.
    assert 2 * len(taken) < len(faust_taken), ([len(b) for b in taken], [len(b) for b in faust_taken])


async def take_quietly(gaps_s: list[float], quiet_s: float, within_s: float) -> list[tuple[float, list[int]]]:
    """Events sent after the given gaps, taken with `quiet_s` and `within_s`: (seconds from the first send to
    the batch, its values) of each batch, until every event has come."""
    app = faust.App("test-batches-quiet", broker="kafka://localhost:9092", store="memory://", web_enabled=False)
    app.flow_control.resume()
    channel = app.channel()
    stream = app.stream(channel)
    started = time.monotonic()

    async def feed() -> None:
        for i, gap in enumerate(gaps_s):
            await asyncio.sleep(gap)
            await channel.send(value=i)

    feeder = asyncio.create_task(feed())
    taken: list[tuple[float, list[int]]] = []
    async for events in batches(stream, 256, within_s, quiet_s):
        taken.append((time.monotonic() - started, [event.value for event in events]))
        if sum(len(values) for _, values in taken) >= len(gaps_s):
            break
    await feeder
    return taken


def test_events_closer_together_than_the_quiet_gap_go_in_one_batch() -> None:
    """Forty events 20 ms apart, a quiet gap of 500 ms: one batch, though the events keep coming for longer than
    the gap (at least 780 ms), and it goes only once the gap has passed after the last of them. A lone event
    after a pause of 2 s is a batch of its own, taken once the gap has passed, long before `within_s`.

    (A take that waited `quiet_s` from the first event, not the newest, would cut the forty after about 25.)"""
    gaps = [0.0] + [0.02] * 39 + [2.0]
    taken = asyncio.run(asyncio.wait_for(take_quietly(gaps, quiet_s=0.5, within_s=30.0), timeout=60))
    assert [values for _, values in taken] == [list(range(40)), [40]]
    assert taken[0][0] >= 0.78 + 0.5  # the first batch waited for the last event, then for the gap
    assert taken[1][0] < 15.0  # the lone event did not wait out within_s (30 s)


def test_a_stream_that_never_goes_quiet_is_cut_within_s() -> None:
    """Events 5 ms apart for 1.5 s with a quiet gap of 100 ms: no gap ever passes, and `within_s` (0.3 s) still
    cuts the batches; every event once, in order."""
    gaps = [0.0] + [0.005] * 299
    taken = asyncio.run(asyncio.wait_for(take_quietly(gaps, quiet_s=0.1, within_s=0.3), timeout=60))
    assert [value for _, values in taken for value in values] == list(range(300))
    assert len(taken) >= 3


async def busy_samples() -> dict[str, list[bool]]:
    """Ten events 1 ms apart, then ten more a second later, each batch processed for 50 ms: whether the stage was
    marked busy before anything came, while each batch was processed, and halfway between the two clumps."""
    app = faust.App("test-batches-activity", broker="kafka://localhost:9092", store="memory://", web_enabled=False)
    app.flow_control.resume()
    channel = app.channel()
    stream = app.stream(channel)
    activity = Activity()
    samples: dict[str, list[bool]] = {"before": [activity.busy], "processing": [], "between": []}

    async def feed() -> None:
        for clump in range(2):
            for i in range(10):
                await channel.send(value=clump * 10 + i)
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.5)
            if clump == 0:
                samples["between"].append(activity.busy)
            await asyncio.sleep(0.5)

    feeder = asyncio.create_task(feed())
    seen = 0
    async for events in batches(stream, 256, 0.1, 0.01, activity):
        samples["processing"].append(activity.busy)
        await asyncio.sleep(0.05)
        seen += len(events)
        if seen >= 20:
            break
    await feeder
    samples["after"] = [activity.busy]
    return samples


def test_the_stage_is_busy_from_its_first_buffered_event_until_a_batch_leaves_the_buffer_empty() -> None:
    samples = asyncio.run(asyncio.wait_for(busy_samples(), timeout=60))
    assert samples["before"] == [False]
    assert samples["processing"] and all(samples["processing"])
    assert samples["between"] == [False]  # the first clump processed, nothing buffered
    assert samples["after"] == [False]


def yielded_total() -> float:
    """What /metrics shows of the time work has yielded to the stage."""
    return metrics.REGISTRY.get_sample_value("mlrisk_yielded_to_signal_stage_seconds_total") or 0.0


async def waits() -> dict[str, float]:
    activity = Activity()
    counted = yielded_total()
    out: dict[str, float] = {}
    started = time.monotonic()
    await activity.pauses(5.0)()
    out["idle"] = time.monotonic() - started
    activity.began()
    pause = activity.pauses(0.2)
    started = time.monotonic()
    for _ in range(5):
        await pause()
    out["never_idle"] = time.monotonic() - started
    out["yielded"] = activity.yielded_s
    out["yielded_metric"] = yielded_total() - counted
    asyncio.get_running_loop().call_later(0.1, activity.ended)
    started = time.monotonic()
    await activity.yield_to(10.0)
    out["ended_meanwhile"] = time.monotonic() - started
    return out


def test_work_that_can_wait_yields_to_a_busy_stage_within_its_bound() -> None:
    """An idle stage costs a pause nothing; a stage that stays busy holds all the pauses of one job together for
    their bound (0.2 s), not each of them; a stage that ends its work releases a pause at once."""
    out = asyncio.run(asyncio.wait_for(waits(), timeout=60))
    assert out["idle"] < 0.05
    assert 0.19 <= out["never_idle"] < 0.6  # five pauses, one bound between them: not 5 × 0.2 s
    assert out["yielded"] >= 0.19
    assert out["yielded_metric"] == pytest.approx(out["yielded"], abs=1e-9)  # what /metrics shows of it
    assert 0.09 <= out["ended_meanwhile"] < 5.0
