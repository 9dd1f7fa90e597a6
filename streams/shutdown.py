"""A worker that stops within a deadline, whether or not the broker and the database answer.

SIGTERM or SIGINT (or a crash) starts Faust's orderly stop: consumption ends, the batch in hand is finished or
abandoned unacknowledged, the sink flushes what it can and offsets of processed input are committed. That stop
waits on the broker and the database; with either gone it would wait for ever, past the grace period after which
an orchestrator kills the process (Kubernetes 30 s, Docker 10 s). A deadline thread therefore ends the process
`MLRISK_STOP_TIMEOUT_S` after the stop began. Nothing is lost by it: what was not committed is delivered again to
the next worker, and the sink's writes are idempotent.

Exit codes: 0 a clean stop; 1 a crash (an unexpected error stopped the worker); 2 a configuration error;
3 the stop outran its deadline and was cut short.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from faust.worker import Worker

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIGURATION = 2
EXIT_STOP_TIMEOUT = 3

log = logging.getLogger("mlrisk")


class BoundedStopWorker(Worker):
    """Faust's worker with a deadline on stopping (see the module's docstring)."""

    def __init__(self, app: Any, *, stop_timeout_s: float, **options: Any) -> None:
        super().__init__(app, **options)
        # no terminal spinner: to spin on every log record it turns the root logger to DEBUG, and every debug
        # record of the Kafka clients (one per message produced) is then built and handled for nothing
        self.spinner = None
        self.stop_timeout_s = stop_timeout_s
        self._deadline: threading.Timer | None = None

    def arm_deadline(self, cause: str) -> None:
        """Start the stop's deadline (once): past it the process exits with EXIT_STOP_TIMEOUT."""
        if self._deadline is not None:
            return
        log.warning("stopping (%s): at most %.0f s", cause, self.stop_timeout_s)
        self._deadline = threading.Timer(self.stop_timeout_s, _cut_short, args=(cause, self.stop_timeout_s))
        self._deadline.daemon = True
        self._deadline.start()

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        self.arm_deadline(signum.name)
        super()._schedule_shutdown(signum)

    async def stop(self) -> None:
        self.arm_deadline("crash" if self.crash_reason is not None else "stop")
        await super().stop()


def _cut_short(cause: str, timeout_s: float) -> None:
    message = (
        f"mlrisk: the stop after {cause} did not finish within MLRISK_STOP_TIMEOUT_S={timeout_s:g} s "
        "(broker or database not answering); exiting now, uncommitted input will be delivered again\n"
    )
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
    finally:
        os._exit(EXIT_STOP_TIMEOUT)
