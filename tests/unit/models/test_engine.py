"""Engine: batch scoring equals single rows, state round-trips bit for bit, redelivery changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from models.data import BarFrame, load_bars
from models.engine import STATE_MAGIC, SignalEngine, SymbolState
from models.features import RING_VALUES
from models.registry import load_bundle

SPAN = (1717200000000 - 3 * 3600_000, 1717200000000 + 8 * 3600_000)  # around 2024-06-01, after training ends


@pytest.fixture(scope="module")
def engine(quick_models: Path) -> SignalEngine:
    return SignalEngine(load_bundle(quick_models))


@pytest.fixture(scope="module")
def frame(klines_dir: Path) -> BarFrame:
    return load_bars(klines_dir, "BTCUSDT", *SPAN)


def run(engine: SignalEngine, frame: BarFrame, state: SymbolState, start: int, stop: int) -> list[dict]:
    out = []
    for i in range(start, stop):
        signal = engine.on_bar(state, frame.bar(i))
        if signal is not None:
            out.append(signal)
    return out


def test_bundle_loads_without_torch(quick_models: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from models.registry import load_bundle; b = load_bundle(sys.argv[1]); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(len(b.members))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(quick_models)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "3"


def test_state_round_trip_gives_identical_continuation(engine: SignalEngine, frame: BarFrame) -> None:
    straight = engine.new_state("BTCUSDT")
    expected = run(engine, frame, straight, 0, len(frame))
    assert len(expected) > 100
    state = engine.new_state("BTCUSDT")
    head = run(engine, frame, state, 0, 500)
    blob = state.to_bytes()
    assert len(blob) < 200_000
    restored = SymbolState.from_bytes(blob)
    tail = run(engine, frame, restored, 500, len(frame))
    assert orjson.dumps(head + tail) == orjson.dumps(expected)
    assert restored.to_bytes() == straight.to_bytes()


def test_state_bytes_hold_the_rings_then_the_rows_after_the_header(engine: SignalEngine, frame: BarFrame) -> None:
    """The layout behind the magic: header length, header, every ring's newest values oldest first (float64,
    little-endian) in ring order, then the feature rows (float32, little-endian); the rings are joined straight
    from their buffers, which wrap around at different places."""
    import struct

    state = engine.new_state("BTCUSDT")
    run(engine, frame, state, 0, 500)
    assert len({ring.pos for ring in state.features.rings.values()}) > 1  # the rings wrap at different places
    blob = state.to_bytes()
    magic, size = struct.unpack_from("<4sI", blob)
    rings_at = 8 + size
    rows_at = rings_at + RING_VALUES * 8
    assert magic == STATE_MAGIC and orjson.loads(blob[8:rings_at])["last_close_time"] == state.last_close_time
    expected_rings = np.concatenate([ring.last(ring.size) for ring in state.features.rings.values()])
    np.testing.assert_array_equal(np.frombuffer(blob[rings_at:rows_at], dtype="<f8"), expected_rings)
    np.testing.assert_array_equal(np.frombuffer(blob[rows_at:], dtype="<f4").reshape(state.rows.shape), state.rows)


def _format_1(state: SymbolState) -> bytes:
    """A state as the earlier format wrote it: one JSON document holding what the header holds now, with the
    feature rings packed in the features and the rows as base64 float32."""
    import base64
    import struct

    blob = state.to_bytes()
    _, size = struct.unpack_from("<4sI", blob)
    header = orjson.loads(blob[8 : 8 + size])
    rows = base64.b64encode(np.ascontiguousarray(state.rows, dtype="<f4").tobytes()).decode()
    return orjson.dumps({**header, "format": 1, "features": state.features.to_dict(), "rows": rows})


def test_a_state_of_the_earlier_format_restores_and_continues_identically(
    engine: SignalEngine, frame: BarFrame
) -> None:
    """A worker upgraded over a changelog of the earlier format carries on bit for bit (the table kept those
    states as JSON strings)."""
    from streams.signals.stage import decode_state

    straight = engine.new_state("BTCUSDT")
    run(engine, frame, straight, 0, len(frame))
    state = engine.new_state("BTCUSDT")
    run(engine, frame, state, 0, 500)
    earlier = _format_1(state)
    assert earlier[:1] == b"{" and len(earlier) > len(state.to_bytes())
    for blob in (earlier, orjson.dumps(earlier.decode())):  # as bytes, and as the table's JSON string
        restored = decode_state(blob)
        assert restored.to_bytes() == state.to_bytes()
        run(engine, frame, restored, 500, len(frame))
        assert restored.to_bytes() == straight.to_bytes()


def test_a_state_that_does_not_fit_its_layout_is_refused(engine: SignalEngine, frame: BarFrame) -> None:
    """Every forged variation of a real state's bytes raises ValueError on restore, before any kernel sees it:
    cut short, grown, another magic, a header that lies about its length or the rows' shape, rings cut short."""
    import struct

    state = engine.new_state("BTCUSDT")
    run(engine, frame, state, 0, 300)
    blob = state.to_bytes()
    _, size = struct.unpack_from("<4sI", blob)
    header = orjson.loads(blob[8 : 8 + size])

    def with_header(changed: dict) -> bytes:
        head = orjson.dumps({**header, **changed})
        return struct.pack("<4sI", blob[:4], len(head)) + head + blob[8 + size :]

    short_rings = {**header["features"]}
    forged = [
        blob[:-4],
        blob + b"\x00" * 4,
        b"MLS\x09" + blob[4:],
        struct.pack("<4sI", blob[:4], size + 3) + blob[8:],
        struct.pack("<4sI", blob[:4], 2**31) + blob[8:],
        with_header({"rows_shape": [header["rows_shape"][0] + 1, header["rows_shape"][1]]}),
        with_header({"rows_shape": [0, -5]}),
        with_header({"rows_shape": "many"}),
        with_header({"features": {**short_rings, "recursive": short_rings["prev"]}}),
        with_header({"features": {**short_rings, "prev": short_rings["prev"][:8]}}),
        orjson.dumps([1, 2, 3]),
        b"",
        orjson.dumps({"format": 1, "padding": "x" * (1 << 20)}),  # the earlier format is bounded too
        blob[:8] + b"[]" + blob[8 + size :],
    ]
    for bad in forged:
        with pytest.raises(ValueError):
            SymbolState.from_bytes(bad)
    assert SymbolState.from_bytes(with_header({})).to_bytes() == blob  # the helper itself changes nothing


def test_batched_scoring_equals_single_row_scoring(engine: SignalEngine, frame: BarFrame) -> None:
    state = engine.new_state("BTCUSDT")
    pendings = []
    for i in range(len(frame)):
        pending = engine.prepare(state, frame.bar(i))
        if pending is not None:
            pendings.append(pending)
    assert len(pendings) >= 64
    batch = engine.score(pendings[:64])
    singles = [engine.score([p])[0] for p in pendings[:64]]
    assert batch == singles
    assert len({p.p_up for p in batch}) > 10


def test_redelivered_bar_returns_the_same_signal_and_leaves_state_alone(engine: SignalEngine, frame: BarFrame) -> None:
    state = engine.new_state("BTCUSDT")
    last = len(frame) - 1
    signals = run(engine, frame, state, 0, last + 1)
    before = state.to_bytes()
    assert engine.on_bar(state, frame.bar(last)) == signals[-1]
    assert engine.on_bar(state, frame.bar(last - 1)) == signals[-2]
    assert engine.prepare(state, frame.bar(last - 2)) is None
    assert state.to_bytes() == before


def test_the_same_bar_decided_under_other_risk_settings_is_another_signal(
    engine: SignalEngine, frame: BarFrame
) -> None:
    from dataclasses import replace

    other = SignalEngine(engine.bundle, replace(engine.risk_config, min_edge_to_cost=0.5))
    mine = run(engine, frame, engine.new_state("BTCUSDT"), 0, len(frame))
    theirs = run(other, frame, other.new_state("BTCUSDT"), 0, len(frame))
    assert [s["bar_close_time"] for s in mine] == [s["bar_close_time"] for s in theirs]
    assert not {s["signal_id"] for s in mine} & {s["signal_id"] for s in theirs}


def test_signal_fields_follow_the_contract(engine: SignalEngine, frame: BarFrame) -> None:
    signals = run(engine, frame, engine.new_state("BTCUSDT"), 0, len(frame))
    other = run(engine, frame, engine.new_state("BTCUSDT"), 0, len(frame))
    assert [s["signal_id"] for s in signals] == [s["signal_id"] for s in other]
    assert len({s["signal_id"] for s in signals}) == len(signals)
    for s in signals:
        assert s["schema_version"] == 1
        assert s["timestamp"].endswith(":00Z")
        assert set(s["model_contributions"]) == {"lightgbm", "lstm", "transformer"}
        weights = [c["weight"] for c in s["model_contributions"].values()]
        assert abs(sum(weights) - 1.0) < 1e-9
        assert s["ml_prediction"] in ("up", "down", "flat")
        if s["signal_type"] == "hold":
            assert s["recommended_leverage"] is None and s["stop_loss_price"] is None and s["quantity"] is None
        orjson.loads(orjson.dumps(s))
    p = np.array([s["metadata"]["p_up"] for s in signals])
    assert ((p > 0.02) & (p < 0.98)).all()
