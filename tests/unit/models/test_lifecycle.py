"""Champion and challenger on real data, the registry's history and rollback, and state carried across versions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.bars import MINUTE_MS, parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine
from models.features import WARMUP_BARS
from models.registry import METADATA_FILE, current_version, load_bundle, promote, promotion_history, rollback
from models.training.lifecycle import DEFAULT_MARGIN, decide, holdout_figures

HOLDOUT = (parse_iso_ms("2024-06-01"), parse_iso_ms("2024-06-08"))


@dataclasses.dataclass
class Inverted:
    """A member that says up where the real one says down: a real model made worse, not a made-up one."""

    inner: object
    name: str
    window: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return 1.0 - self.inner.predict_proba(x)  # type: ignore[attr-defined]


def _inverted(bundle):  # type: ignore[no-untyped-def]
    members = tuple(Inverted(m, m.name, m.window) for m in bundle.members)
    return dataclasses.replace(bundle, version=bundle.version + "-inverted", members=members)


def _holdout_frame(klines_dir: Path, window: int):  # type: ignore[no-untyped-def]
    warmup = (WARMUP_BARS + window + 60) * MINUTE_MS
    return load_bars(klines_dir, "BTCUSDT", HOLDOUT[0] - warmup, HOLDOUT[1] + 15 * MINUTE_MS)


def test_a_worse_challenger_is_not_promoted_and_a_better_one_is(quick_models: Path, klines_dir: Path) -> None:
    champion = load_bundle(quick_models)
    worse = _inverted(champion)
    real, inverted = holdout_figures([champion, worse], _holdout_frame(klines_dir, champion.window), HOLDOUT)
    assert real["ensemble"]["rows"] > 5_000
    # the holdout is out of sample for the champion (trained on bars before 2024-06-01) and it ranks moves
    assert real["ensemble"]["ic"] > 0
    assert inverted["ensemble"]["ic"] == pytest.approx(-real["ensemble"]["ic"], abs=0.02)
    promoted, reason = decide(inverted, real, DEFAULT_MARGIN)
    assert not promoted, reason
    promoted, reason = decide(real, inverted, DEFAULT_MARGIN)
    assert promoted, reason
    # equal is not better: the margin has to be earned
    promoted, reason = decide(real, real, DEFAULT_MARGIN)
    assert not promoted and "margin" in reason


def test_without_a_champion_a_challenger_needs_a_positive_ic(quick_models: Path, klines_dir: Path) -> None:
    champion = load_bundle(quick_models)
    (inverted,) = holdout_figures([_inverted(champion)], _holdout_frame(klines_dir, champion.window), HOLDOUT)
    promoted, reason = decide(inverted, None, DEFAULT_MARGIN)
    assert not promoted and "IC" in reason


def _fake_version(root: Path, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / METADATA_FILE).write_bytes(orjson.dumps({"version": name}))


def test_rollback_walks_back_the_promotions_one_by_one(tmp_path: Path) -> None:
    for name in ("v1", "v2", "v3"):
        _fake_version(tmp_path, name)
        promote(tmp_path, name)
    assert promotion_history(tmp_path) == ["v1", "v2", "v3"]
    assert rollback(tmp_path) == ("v3", "v2")
    assert current_version(tmp_path) == "v2"
    assert rollback(tmp_path) == ("v2", "v1")
    assert current_version(tmp_path) == "v1"
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback(tmp_path)
    assert current_version(tmp_path) == "v1"
    with pytest.raises(FileNotFoundError):
        promote(tmp_path, "never-trained")


def test_a_symbol_state_carried_to_another_version_keeps_features_and_restarts_the_ensemble(
    quick_models: Path, klines_dir: Path
) -> None:
    bundle = load_bundle(quick_models)
    old = SignalEngine(bundle)
    other = dataclasses.replace(bundle, version="another-version")
    new = SignalEngine(other)
    frame = load_bars(klines_dir, "BTCUSDT", parse_iso_ms("2024-06-01"), parse_iso_ms("2024-06-02"))
    state = old.new_state("BTCUSDT")
    for bar in list(frame.bars())[:700]:
        pending = old.prepare(state, bar)
        if pending is not None:
            old.finish(state, pending, old.score([pending])[0], {})
    assert state.ensemble.pending, "predictions wait for their outcome"
    rows, features = state.rows.copy(), state.features.to_dict()
    adopted = new.adopt(state)
    assert adopted.model_version == "another-version"
    assert adopted.ensemble.pending == [] and adopted.ensemble.resolved == 0
    np.testing.assert_array_equal(adopted.rows, rows)
    assert adopted.features.to_dict() == features
    assert new.adopt(adopted) is adopted  # same version: nothing changes
