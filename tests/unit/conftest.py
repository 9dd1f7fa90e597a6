"""Shared fixtures: the real data folder and one quick-trained model bundle per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
KLINES = DATA_DIR / "binance-spot-klines-1m"
OHLCV = DATA_DIR / "binance-spot-ohlcv-1m"


@pytest.fixture(scope="session")
def klines_dir() -> Path:
    if not KLINES.is_dir():
        pytest.skip(f"real data not found at {KLINES}")
    return KLINES


@pytest.fixture(scope="session")
def ohlcv_dir() -> Path:
    if not OHLCV.is_dir():
        pytest.skip(f"real data not found at {OHLCV}")
    return OHLCV


@pytest.fixture(scope="session")
def quick_models(klines_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick-trained bundle (20 days of BTCUSDT ending 2024-06-01) in a session temp folder."""
    from models.training.train import train_cli

    out = tmp_path_factory.mktemp("models")
    train_cli(
        klines_dir,
        "BTCUSDT",
        out,
        quick=True,
        horizon=15,
        progress=False,
        end="2024-06-01T00:00:00Z",
        days=20,
    )
    return out


def registry_copy(tmp_path: Path, models: Path) -> tuple[Path, str]:
    """A registry of its own holding a copy of `models`' current version, for tests that damage it."""
    import shutil

    from models.registry import CURRENT_FILE, current_version

    version = current_version(models)
    root = tmp_path / "registry"
    shutil.copytree(models / version, root / version)
    (root / CURRENT_FILE).write_text(version + "\n")
    return root, version
