"""Many symbols decided together equal each symbol decided alone, field for field, on a real day.

The signal stage prepares a round of bars of many symbols at once (`SignalEngine.prepare_many`: the feature
kernels run over all of them together), scores them in one call per model and finishes each; the single-symbol
path (`on_bar`) must give the very same signals. The symbols are synthetic names over real data: BTCUSDT klines
of different days and ETHUSDT bars (whose source lacks trade counts and taker volume, so some features are NaN).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from models.bars import Bar, parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine
from models.registry import load_bundle

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def streams(klines_dir: Path, ohlcv_dir: Path) -> dict[str, list[Bar]]:
    """Four symbol names, each a real day of bars (renamed), after the quick models' training data."""
    sources = {
        "AAAUSDT": (klines_dir, "BTCUSDT", "2024-06-03"),
        "BBBUSDT": (klines_dir, "BTCUSDT", "2024-06-04"),
        "CCCUSDT": (ohlcv_dir, "ETHUSDT", "2024-05-20"),
        "DDDUSDT": (klines_dir, "BTCUSDT", "2024-06-05T07:13:00Z"),
    }
    out = {}
    for name, (folder, symbol, start) in sources.items():
        start_ms = parse_iso_ms(start)
        frame = load_bars(folder, symbol, start_ms, start_ms + DAY_MS)
        assert len(frame) > 1_000, f"{symbol} from {start}: too few bars"
        out[name] = [replace(bar, symbol=name) for bar in frame.bars()]
    return out


def test_symbols_decided_together_equal_each_decided_alone(quick_models: Path, streams: dict[str, list[Bar]]) -> None:
    alone_engine = SignalEngine(load_bundle(quick_models))
    alone: dict[str, list[dict]] = {}
    for name, bars in streams.items():
        state = alone_engine.new_state(name)
        alone[name] = [s for s in (alone_engine.on_bar(state, bar) for bar in bars) if s is not None]

    engine = SignalEngine(load_bundle(quick_models))
    states = {name: engine.new_state(name) for name in streams}
    together: dict[str, list[dict]] = {name: [] for name in streams}
    rounds_with_many = 0
    for i in range(max(len(bars) for bars in streams.values())):
        names = [name for name, bars in streams.items() if i < len(bars)]
        prepared = engine.prepare_many([states[n] for n in names], [streams[n][i] for n in names])
        ready = [(n, p) for n, p in zip(names, prepared, strict=True) if p is not None]
        if not ready:
            continue
        rounds_with_many += len(ready) > 1
        predictions = engine.score([p for _, p in ready])
        for (name, pending), prediction in zip(ready, predictions, strict=True):
            together[name].append(engine.finish(states[name], pending, prediction))

    assert rounds_with_many > 500  # the comparison exercised real batches, not rounds of one
    for name in streams:
        assert len(alone[name]) > 500
        assert len(together[name]) == len(alone[name])
        # field for field, bit for bit: the same JSON
        assert [orjson.dumps(s) for s in together[name]] == [orjson.dumps(s) for s in alone[name]], name
    # the four streams are different markets: their decisions are not copies of each other
    p_up = {name: [s["metadata"]["p_up"] for s in alone[name][:200]] for name in streams}
    assert len({tuple(values) for values in p_up.values()}) == len(streams)
