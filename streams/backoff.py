"""Waits between retries of a loop that may run until a service comes back: doubling, capped, logged."""

from __future__ import annotations

import asyncio
import logging


class Backoff:
    """The first wait is `first_s`; each next one doubles, up to `most_s`."""

    def __init__(self, first_s: float = 0.2, most_s: float = 5.0) -> None:
        self.delay_s = first_s
        self.most_s = most_s

    async def wait(self, log: logging.Logger, message: str, *args: object) -> None:
        """Log a warning (`message % args`, then the wait) and sleep; the next wait doubles."""
        log.warning(message + "; retrying in %.1fs", *args, self.delay_s)
        await asyncio.sleep(self.delay_s)
        self.delay_s = min(self.delay_s * 2, self.most_s)
