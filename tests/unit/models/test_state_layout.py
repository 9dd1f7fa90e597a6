"""A feature state stores each ring's newest values once; states written in the earlier layout (each ring's
doubled buffer and position) still restore, and both continue exactly as the state that was never stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from models.bars import parse_iso_ms
from models.data import load_bars
from models.features import WARMUP_BARS, FeatureState, pack_float_values, pack_floats, unpack_floats

START = parse_iso_ms("2024-03-01")


def _earlier_layout(state: FeatureState) -> dict:
    """The state as the earlier layout wrote it: {ring: [its whole doubled buffer, its position]}, and each
    market float packed on its own."""
    data = state.to_dict()
    data["rings"] = {name: [pack_floats(ring.buf), ring.pos] for name, ring in state.rings.items()}
    market = state.market
    assert market is not None
    data["market"] = [
        market.close_time_ms,
        *(
            pack_floats(np.array([v]))
            for v in (
                market.price,
                market.atr,
                market.sigma_1m,
                market.vol_percentile,
                market.adx,
                market.trend,
                market.return_1m,
                market.volume_z,
                market.trades_z,
            )
        ),
    ]
    return data


def test_stored_states_of_both_layouts_continue_exactly(klines_dir: Path) -> None:
    frame = load_bars(klines_dir, "BTCUSDT", START, START + 900 * 60_000)
    bars = list(frame.bars())
    cut = WARMUP_BARS + 157  # rings wrapped around at positions other than 0
    straight = FeatureState("BTCUSDT")
    for bar in bars[:cut]:
        straight.update(bar)
    assert straight.ready and straight.rings["close"].pos != 0

    blob = straight.to_bytes()
    earlier = orjson.dumps(_earlier_layout(straight))
    assert len(blob) < 0.6 * len(earlier)  # each ring's values are stored once, not twice
    restored = [FeatureState.from_bytes(blob), FeatureState.from_bytes(earlier)]
    for state in restored:
        assert state.to_bytes() == blob
        assert state.market == straight.market

    expected = [straight.update(bar) for bar in bars[cut:]]
    assert sum(row is not None for row in expected) > 400
    for state in restored:
        rows = [state.update(bar) for bar in bars[cut:]]
        for got, want in zip(rows, expected, strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                np.testing.assert_array_equal(got, want)
        assert state.to_bytes() == straight.to_bytes()


def test_a_few_floats_pack_to_the_text_of_their_array_every_bit_kept() -> None:
    quiet_nan = float("nan")
    payload_nan = float(np.frombuffer(bytes.fromhex("0100000000f8ff7f"), dtype="<f8")[0])  # a NaN with a payload
    values = (1.5, -0.0, 1e-310, quiet_nan, payload_nan, float("inf"), 97_123.456789012345, np.float64(2.0) / 3.0)
    text = pack_float_values(values)
    assert text == pack_floats(np.array(values))
    assert unpack_floats(text).tobytes() == np.array(values, dtype="<f8").tobytes()
