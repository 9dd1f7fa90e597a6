"""`faust_fixes.deliver`: Faust's hand-over of a fetched message to its channels, without tasks when nothing waits.

A delivery that completes before it first waits is done in place; one that waits goes on where it stopped under
`wait_first`, which a suspended flow still cuts short, as in Faust's own loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mode import Service

from streams.faust_fixes import deliver


class Consumer(Service):
    """What `deliver` uses of Faust's consumer: the service's own stop and crash flags, `wait_first`, and the
    flow-suspension event; `wait_first` calls are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.waits = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        self.waits += 1
        return await super().wait_first(*coros, timeout=timeout)


def test_a_delivery_that_does_not_wait_is_done_in_place() -> None:
    async def scenario() -> tuple[list[int], int]:
        consumer, delivered = Consumer(), []

        async def callback(message: int) -> None:
            delivered.append(message)

        for message in range(5):
            await deliver(consumer, callback, message)
        return delivered, consumer.waits

    delivered, waits = asyncio.run(scenario())
    assert delivered == [0, 1, 2, 3, 4]
    assert waits == 0


def test_a_delivery_that_waits_goes_on_where_it_stopped() -> None:
    """The callback waits on a queue (a full stream buffer, say); once an item comes, its code after the wait
    runs once, with the value the wait returned."""

    async def scenario() -> tuple[list[Any], int]:
        consumer, queue, seen = Consumer(), asyncio.Queue[str](), []

        async def callback(message: int) -> None:
            seen.append(("before", message))
            seen.append(("got", await queue.get()))

        delivery = asyncio.create_task(deliver(consumer, callback, 7))
        await asyncio.sleep(0.05)
        assert not delivery.done()
        await queue.put("room")
        await asyncio.wait_for(delivery, 5)
        return seen, consumer.waits

    seen, waits = asyncio.run(scenario())
    assert seen == [("before", 7), ("got", "room")]
    assert waits == 1


def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended() -> None:
    async def scenario() -> tuple[list[str], bool]:
        consumer, seen = Consumer(), []
        never = asyncio.Event()

        async def callback(message: int) -> None:
            try:
                await never.wait()
                seen.append("delivered")
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        delivery = asyncio.create_task(deliver(consumer, callback, 1))
        await asyncio.sleep(0.05)
        consumer.suspend_flow.set()  # a rebalance
        await asyncio.wait_for(delivery, 5)
        await asyncio.sleep(0.05)  # the abandoned delivery's cancellation reaches it
        return seen, delivery.cancelled()

    seen, cancelled = asyncio.run(scenario())
    assert seen == ["cancelled"]
    assert not cancelled  # deliver itself returns, as Faust's wait_first does


def test_with_the_flow_suspended_a_delivery_goes_through_wait_first() -> None:
    async def scenario() -> tuple[list[int], int]:
        consumer, delivered = Consumer(), []
        consumer.suspend_flow.set()

        async def callback(message: int) -> None:
            delivered.append(message)

        await deliver(consumer, callback, 3)
        return delivered, consumer.waits

    delivered, waits = asyncio.run(scenario())
    assert waits == 1
    assert delivered == [3]  # Faust's wait_first runs it too (both of its awaitables complete at once)


def test_the_installed_faust_runs_the_loop_that_delivers_in_place() -> None:
    """The locked faust-streaming is the release whose consumer loop `faust_fixes` copies: an upgrade that
    changes it must look at the loop again, not lose the change quietly."""
    import faust
    from faust.transport.consumer import Consumer as FaustConsumer

    from streams import faust_fixes

    faust_fixes.apply()
    assert faust.__version__.startswith(faust_fixes.DRAIN_LOOP_OF)
    assert FaustConsumer._drain_messages is faust_fixes._drain_messages  # type: ignore[comparison-overlap]
