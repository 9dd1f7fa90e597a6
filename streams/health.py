"""Health from progress, not from the existence of objects.

Each component reports whether it is moving: the broker answered a metadata request lately, the ingest loop came
round lately and is not stuck retrying a publication or a restore, the signal stage took the bars waiting for it,
the sink's database answers and its writes go through, a model version is in service, the event loop wakes on time.
`/health` and `/health/ready` answer 503 naming each stalled component and why; `/health/live` answers while the
process does. A check that itself fails reports its component as stalled: a health request never errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mlrisk.health")

Check = Callable[[float], dict[str, Any]]


def stalled(reason: str, **detail: Any) -> dict[str, Any]:
    return {"ok": False, "reason": reason, **detail}


def healthy(**detail: Any) -> dict[str, Any]:
    return {"ok": True, **detail}


@dataclass(slots=True)
class Progress:
    """When a component last moved, and since when it has been failing (None while it is not)."""

    started_s: float = field(default_factory=time.monotonic)
    last_s: float | None = None
    failing_since_s: float | None = None
    failure: str | None = None
    busy_since_s: float | None = None  # work in hand since

    def begin(self) -> None:
        """Work taken in hand (a batch); `moved` ends it."""
        self.busy_since_s = time.monotonic()

    def moved(self) -> None:
        self.last_s = time.monotonic()
        self.failing_since_s = None
        self.failure = None
        self.busy_since_s = None

    def busy_s(self, now: float) -> float:
        return 0.0 if self.busy_since_s is None else now - self.busy_since_s

    def failed(self, reason: str) -> None:
        if self.failing_since_s is None:
            self.failing_since_s = time.monotonic()
        self.failure = reason[:300]

    def idle_s(self, now: float) -> float:
        """Seconds since it last moved (or since it was created, if it never has)."""
        return now - (self.last_s if self.last_s is not None else self.started_s)

    def failing_s(self, now: float) -> float:
        return 0.0 if self.failing_since_s is None else now - self.failing_since_s


@dataclass(slots=True)
class HealthReport:
    """The worker's components and their checks; `stall_s` is how long a component may stand still with work."""

    stall_s: float
    checks: dict[str, Check] = field(default_factory=dict)

    def register(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def evaluate(self, now: float | None = None) -> tuple[bool, dict[str, dict[str, Any]]]:
        now = time.monotonic() if now is None else now
        results: dict[str, dict[str, Any]] = {}
        for name, check in self.checks.items():
            try:
                results[name] = check(now)
            except Exception as error:  # not started yet, shutting down: say so instead of answering 500
                results[name] = stalled(f"not available ({type(error).__name__})")
        return all(r["ok"] for r in results.values()), results

    def body(self) -> tuple[int, dict[str, Any]]:
        """The status code and JSON body of /health and /health/ready."""
        ready, results = self.evaluate()
        reasons = [f"{name}: {r.get('reason', 'stalled')}" for name, r in results.items() if not r["ok"]]
        if reasons:
            log.debug("not ready: %s", "; ".join(reasons))
        body = {"status": "ok" if ready else "stalled", "stalled": reasons, "checks": results}
        return (200 if ready else 503), body
