"""Hot swap: follow the registry's CURRENT pointer and hand a fully loaded model version to the signal agent.

`poll` (a timer) notices a promoted or rolled-back version and loads it in a thread, off the event loop; only a
version whose every member loaded is offered. The signal agent takes it between two batches (`take_loaded`), so
every signal of a batch comes from one whole version and names it. A version that fails to load (a pointer that
leaves the registry, a corrupt or incomplete version) is reported, recorded as a `load_failure` event, and skipped;
the version in service stays, and with none in service the worker runs degraded (bars, no signals). A failed
version is tried again once the pointer or the version's files change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from models.registry import (
    CURRENT_FILE,
    ModelBundle,
    RegistryError,
    current_version,
    load_bundle,
    version_fingerprint,
)
from streams import metrics

log = logging.getLogger("mlrisk.models")


class ModelSwitch:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.serving: str | None = None
        self.loaded: ModelBundle | None = None
        self.failed: dict[str, tuple[tuple[str, int, int], ...]] = {}  # version → its files when it failed
        self.problem: str | None = None  # why the pointer's version is not served, while that holds
        self.swaps: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[tuple[str, dict[str, Any]]] = []
        self._loading = False
        self._load_seconds = 0.0

    def load_initial(self) -> ModelBundle | None:
        """The version to serve at start-up, or None (no models yet, or a version that cannot be served)."""
        try:
            version = current_version(self.model_dir)
        except FileNotFoundError:
            log.warning(
                "no trained models under %s: bars are built, no signals until `mlrisk train` runs", self.model_dir
            )
            return None
        except RegistryError as error:
            self._fail(_pointer_text(self.model_dir), (), error)
            return None
        fingerprint = version_fingerprint(self.model_dir, version)
        try:
            bundle = load_bundle(self.model_dir, version)
        except Exception as error:  # start degraded rather than die and be restarted into the same error
            self._fail(version, fingerprint, error)
            return None
        self.serving = bundle.version
        return bundle

    def _fail(self, key: str, fingerprint: tuple[tuple[str, int, int], ...], error: BaseException) -> None:
        """Report a version (or pointer) that cannot be served, once for as long as its files stay the same."""
        if self.failed.get(key) == fingerprint:
            return
        reason = str(error)[:500]
        log.error(
            "model version %r cannot be served (%s); serving %s",
            key[:100],
            reason,
            self.serving or "nothing: no signals until a good version is promoted",
        )
        self.failed[key] = fingerprint
        self.problem = f"model version {key[:100]!r} cannot be served: {reason}"
        self.failures.append((key[:100], {"error": reason, "serving": self.serving}))
        metrics.MODEL_LOAD_FAILURES.inc()

    async def poll(self) -> None:
        if self._loading:
            return
        try:
            version = current_version(self.model_dir)
        except FileNotFoundError:
            return
        except RegistryError as error:
            self._fail(_pointer_text(self.model_dir), (), error)
            return
        target = self.loaded.version if self.loaded is not None else self.serving
        if version == target:
            self.problem = None
            return
        fingerprint = await asyncio.to_thread(version_fingerprint, self.model_dir, version)
        if self.failed.get(version) == fingerprint:
            return
        self._loading = True
        started = time.perf_counter()
        try:
            bundle = await asyncio.to_thread(load_bundle, self.model_dir, version)
        except Exception as error:  # a broken version must not take the worker down: keep serving
            self._fail(version, fingerprint, error)
            return
        finally:
            self._loading = False
        self._load_seconds = time.perf_counter() - started
        log.info("model version %s loaded in %.2f s; switching at the next batch", version, self._load_seconds)
        self.failed.pop(version, None)
        self.problem = None
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

    def take_failures(self) -> list[tuple[str, dict[str, Any]]]:
        failures, self.failures = self.failures, []
        return failures


def _pointer_text(model_dir: Path) -> str:
    """What CURRENT says, bounded, as the key of a pointer that failed (a new pointer is tried afresh)."""
    try:
        return "CURRENT=" + (Path(model_dir) / CURRENT_FILE).read_bytes()[:120].decode("utf-8", "replace").strip()
    except OSError:
        return "CURRENT=?"
