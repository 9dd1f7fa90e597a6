"""The soak runs only when asked for (`make soak`, which sets MLRISK_SOAK_S): it takes half an hour."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.conftest import model_dir  # noqa: F401  (the quick models, shared with the soak)


def pytest_ignore_collect(collection_path: Path) -> bool:
    return not os.environ.get("MLRISK_SOAK_S") and collection_path.name.startswith("test_")
