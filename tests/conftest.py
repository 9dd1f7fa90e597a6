"""Shared test helpers: where the real market data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = (REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        raise RuntimeError(f"the shared market data is missing at {DATA}")
    return DATA
