"""A fix to faust-streaming's recovery: seek the stream partitions to their committed offsets before resuming them.

After a restart or a rebalance, Faust's `Recovery` resumes the assigned stream partitions and only then awaits the
seek to their committed offsets (in `on_recovery_completed` and `_resume_streams`). The fetcher is already
running at that point (it read the changelogs), so it delivers messages from the partitions in the meantime; when
the seek lands it moves Faust's read offset back under them, and messages fetched in that window are dropped as
already read: a run of input never processed, found as bars missing after a restart mid-replay. The same class of
race was fixed upstream for the table-less path (faust-streaming issue 216); this applies the order to both paths.

The two methods below are Faust's own, with the seek moved before the resume.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from faust.tables.recovery import Recovery


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


def apply() -> None:
    cast(Any, Recovery).on_recovery_completed = on_recovery_completed
    cast(Any, Recovery)._resume_streams = _resume_streams
