"""Share of 1-minute bars per market regime, BTCUSDT 2023-2024, from the real data in ../shared/data.

Run: `.venv/bin/python bench/regime_report.py [DATA_DIR]`.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.data import load_bars
from risk import REGIMES, RegimeConfig, market_indicators, regime_history

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def main() -> None:
    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA_DIR
    frame = load_bars(data_dir, "BTCUSDT", _ms("2023-01-01"), _ms("2025-01-01"))
    indicators = market_indicators(frame.high, frame.low, frame.close, frame.volume, frame.trades)
    regimes = np.array(regime_history(indicators, frame.close, frame.open_time + 59_999, "BTCUSDT", RegimeConfig()))
    periods = {
        "2023": ("2023-01-01", "2024-01-01"),
        "2024": ("2024-01-01", "2025-01-01"),
        "2023-2024": ("2023-01-01", "2025-01-01"),
    }
    print(f"{'period':<10} {'bars':>9} " + " ".join(f"{name:>17}" for name in REGIMES))
    for label, (start, end) in periods.items():
        window = regimes[(frame.open_time >= _ms(start)) & (frame.open_time < _ms(end))]
        counts = Counter(window.tolist())
        print(f"{label:<10} {window.size:>9} " + " ".join(f"{counts[name] / window.size:>17.2%}" for name in REGIMES))


if __name__ == "__main__":
    main()
