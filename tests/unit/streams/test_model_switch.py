"""Hot swap with a broken registry: start degraded, report once, retry when the files change, recover."""

from __future__ import annotations

import asyncio
from pathlib import Path

from models.registry import CURRENT_FILE, METADATA_FILE
from streams.signals.model_switch import ModelSwitch
from tests.unit.conftest import registry_copy


def test_a_corrupt_version_at_start_up_degrades_and_recovers_once_repaired(tmp_path: Path, quick_models: Path) -> None:
    """Before, the corrupt file raised out of start-up: the worker died and its supervisor restarted it into the
    same error; and hot swap never retried a version that had once failed, even after it was repaired."""
    root, version = registry_copy(tmp_path, quick_models)
    good = (root / version / METADATA_FILE).read_bytes()
    (root / version / METADATA_FILE).write_bytes(b"{truncated")
    switch = ModelSwitch(root)
    assert switch.load_initial() is None
    assert switch.serving is None and switch.problem is not None and version in switch.problem
    assert [v for v, _ in switch.take_failures()] == [version]
    asyncio.run(switch.poll())  # the same broken files: not reported again
    assert switch.take_failures() == [] and switch.loaded is None
    (root / version / METADATA_FILE).write_bytes(good)  # repaired in place
    asyncio.run(switch.poll())
    bundle = switch.take_loaded()
    assert bundle is not None and bundle.version == version
    assert switch.serving == version and switch.problem is None


def test_a_pointer_out_of_the_registry_keeps_the_version_in_service(tmp_path: Path, quick_models: Path) -> None:
    root, version = registry_copy(tmp_path, quick_models)
    switch = ModelSwitch(root)
    assert switch.load_initial() is not None and switch.serving == version
    (root / CURRENT_FILE).write_text("../../etc")
    asyncio.run(switch.poll())
    assert switch.loaded is None and switch.serving == version
    failures = switch.take_failures()
    assert len(failures) == 1 and "CURRENT=../../etc" in failures[0][0]
    assert switch.problem is not None and "registry" in switch.problem
    (root / CURRENT_FILE).write_text(version)  # pointer repaired: nothing to load, the problem is gone
    asyncio.run(switch.poll())
    assert switch.problem is None and switch.loaded is None
