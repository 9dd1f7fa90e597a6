"""Hot swap: follow the registry's CURRENT pointer and hand a fully loaded model version to the signal agent.

`poll` (a timer) notices a promoted or rolled-back version and loads it in a thread, off the event loop; only a
version whose every member loaded is offered. The signal agent takes it between two batches (`take_loaded`), so
every signal of a batch comes from one whole version and names it. A version that fails to load is reported
and skipped; the version in service stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from models.registry import ModelBundle, current_version, load_bundle
from streams import metrics

log = logging.getLogger("mlrisk.models")


class ModelSwitch:
    def __init__(self, model_dir: Path, serving: str | None) -> None:
        self.model_dir = Path(model_dir)
        self.serving = serving
        self.loaded: ModelBundle | None = None
        self.failed: set[str] = set()
        self.swaps: list[tuple[str, dict[str, Any]]] = []
        self._loading = False
        self._load_seconds = 0.0

    async def poll(self) -> None:
        if self._loading:
            return
        try:
            version = current_version(self.model_dir)
        except FileNotFoundError:
            return
        target = self.loaded.version if self.loaded is not None else self.serving
        if version == target or version in self.failed:
            return
        self._loading = True
        started = time.perf_counter()
        try:
            bundle = await asyncio.to_thread(load_bundle, self.model_dir, version)
        except Exception as error:  # a broken version must not take the worker down: keep serving
            log.error("model version %s failed to load (%s); still serving %s", version, error, self.serving)
            self.failed.add(version)
            metrics.MODEL_LOAD_FAILURES.inc()
            return
        finally:
            self._loading = False
        self._load_seconds = time.perf_counter() - started
        log.info("model version %s loaded in %.2f s; switching at the next batch", version, self._load_seconds)
        self.loaded = bundle

    def take_loaded(self) -> ModelBundle | None:
        """The version to serve from now on, if one is ready (called by the signal agent between batches)."""
        bundle, self.loaded = self.loaded, None
        if bundle is not None:
            self.swaps.append((bundle.version, {"from": self.serving, "load_seconds": round(self._load_seconds, 3)}))
            self.serving = bundle.version
            metrics.MODEL_SWAPS.inc()
        return bundle

    def take_swaps(self) -> list[tuple[str, dict[str, Any]]]:
        swaps, self.swaps = self.swaps, []
        return swaps
