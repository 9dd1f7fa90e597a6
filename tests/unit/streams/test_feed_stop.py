"""The feed's stop: the work in hand finishes within the grace, and only what outlasts it is cancelled."""

from __future__ import annotations

import asyncio

from streams.feed.service import finish_or_cancel


def test_work_in_hand_finishes_and_only_what_outlasts_the_grace_is_cancelled() -> None:
    async def scenario() -> tuple[list[str], bool, bool]:
        done: list[str] = []

        async def publish_then_snapshot() -> None:  # a diff and the snapshot it bridges, handed over together
            await asyncio.sleep(0.05)
            done.append("diff")
            await asyncio.sleep(0.05)
            done.append("snapshot")

        async def held() -> None:  # a back-fill waiting on a Retry-After far beyond the grace
            await asyncio.sleep(60)
            done.append("held")

        finishing = asyncio.create_task(publish_then_snapshot())
        stuck = asyncio.create_task(held())
        await asyncio.sleep(0)
        await asyncio.wait_for(finish_or_cancel([finishing, stuck], grace_s=1.0), timeout=10)
        return done, finishing.cancelled(), stuck.cancelled()

    done, finishing_cancelled, stuck_cancelled = asyncio.run(scenario())
    assert done == ["diff", "snapshot"]
    assert not finishing_cancelled and stuck_cancelled


def test_no_tasks_is_no_wait() -> None:
    asyncio.run(asyncio.wait_for(finish_or_cancel([], grace_s=60), timeout=1))
