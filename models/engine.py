"""The one code path from closed bar to signal, shared by the backtest and the live worker.

`prepare` advances a symbol's state with a bar (settling the ensemble's due predictions, the virtual
position's stops, the features) and returns what must be scored; `score` runs each model once over every
symbol's pending row; `finish` asks the risk library for a decision, updates the virtual position and returns
the signal dict. A bar not newer than the last one processed (a redelivery) changes nothing: `on_bar` answers
it with the signal already emitted for it. State serialises to bytes and restores exactly, so a restart
continues bit for bit.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from models.bars import DAY_MS, Bar
from models.ensemble import (
    EnsemblePrediction,
    EnsembleState,
    combine,
    misfit,
    new_state,
    remember,
    resolve,
    weights_many,
)
from models.features import N_FEATURES, RING_VALUES, WARMUP_BARS, FeatureState, MarketFeatures, update_many
from models.registry import ModelBundle
from models.signal import build_signal, risk_config_key
from models.simulate import FillCosts, VirtualBook, check_exits, close_position, open_position
from risk import decide
from risk.config import RiskConfig
from risk.types import MarketSnapshot, ModelView, OpenPosition, PortfolioState, RegimeState

RECENT_SIGNALS = 5
# a state's bytes: the magic (its format, 2), the header's length (u32), the header, the rings, the rows
STATE_MAGIC = b"MLS\x02"
_PREFIX = struct.Struct("<4sI")
MAX_STATE_BYTES = 1 << 20


@dataclass(slots=True)
class SymbolState:
    """Everything the engine keeps for one symbol between bars."""

    symbol: str
    features: FeatureState
    rows: np.ndarray  # (window, F) float32, the newest feature rows, oldest first
    rows_filled: int
    ensemble: EnsembleState
    regime: RegimeState | None = None
    book: VirtualBook = field(default_factory=VirtualBook)
    peak_equity: float = 0.0
    day_start_equity: float = 0.0
    day: int = -1
    last_close_time: int | None = None
    recent: list[dict[str, Any]] = field(default_factory=list)
    # each of `recent` as JSON, written once when it is decided: a state is serialised every bar
    recent_json: list[bytes] = field(default_factory=list, repr=False, compare=False)
    model_version: str | None = None  # the version whose ensemble memory this state holds

    def to_bytes(self) -> bytes:
        """Compact, exact serialisation: a small JSON header (orjson), then the feature rings (float64) and the
        feature rows (float32) as raw little-endian bytes, behind `STATE_MAGIC`."""
        regime = self.regime
        rows = np.ascontiguousarray(self.rows, dtype="<f4")
        header = orjson.dumps(
            {
                "symbol": self.symbol,
                "features": self.features.header(),
                "rows_shape": rows.shape,
                "rows_filled": self.rows_filled,
                "ensemble": self.ensemble.to_dict(),
                "regime": None
                if regime is None
                else [regime.regime, regime.candidate, regime.count, regime.liquidation_bars_left],
                "book": self.book.to_dict(),
                "peak_equity": self.peak_equity,
                "day_start_equity": self.day_start_equity,
                "day": self.day,
                "last_close_time": self.last_close_time,
                "recent": [orjson.Fragment(text) for text in self.recent_json]
                if len(self.recent_json) == len(self.recent)
                else self.recent,
                "model_version": self.model_version,
            }
        )
        rings = [ring.data for ring in self.features.ring_slices()]
        return b"".join((_PREFIX.pack(STATE_MAGIC, len(header)), header, *rings, rows.data))

    @classmethod
    def from_bytes(cls, blob: bytes) -> SymbolState:
        """Restore a state written by `to_bytes`, or by the earlier JSON format (1), of at most MAX_STATE_BYTES;
        anything that does not fit the layout raises (ValueError where the layout itself is wrong)."""
        if len(blob) > MAX_STATE_BYTES:
            raise ValueError(f"an engine state of {len(blob)} bytes")
        if blob[:1] == b"{":
            return cls._from_json(blob)
        if len(blob) < _PREFIX.size:
            raise ValueError(f"an engine state of {len(blob)} bytes")
        magic, size = _PREFIX.unpack_from(blob)
        if magic != STATE_MAGIC:
            raise ValueError(f"unsupported engine state format {bytes(magic)!r}")
        start = _PREFIX.size + size
        data = orjson.loads(blob[_PREFIX.size : start])
        if not isinstance(data, dict):
            raise ValueError("an engine state's header is not an object")
        shape = data["rows_shape"]
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and 0 < n <= 4096 for n in shape)):
            raise ValueError(f"an engine state's rows shape {shape!r}")
        rows_at = start + RING_VALUES * 8
        if len(blob) != rows_at + shape[0] * shape[1] * 4:
            raise ValueError(f"an engine state of {len(blob)} bytes does not fit its header")
        rings = np.frombuffer(blob, dtype="<f8", count=RING_VALUES, offset=start).astype(np.float64)
        rows = np.frombuffer(blob, dtype="<f4", offset=rows_at).reshape(shape).astype(np.float32)
        return cls._from_parts(data, FeatureState.from_parts(data["features"], rings), rows)

    @classmethod
    def _from_json(cls, blob: bytes) -> SymbolState:
        """The earlier format: one JSON document, arrays as base64 strings."""
        data = orjson.loads(blob)
        if data.get("format") != 1:
            raise ValueError(f"unsupported engine state format {data.get('format')!r}")
        rows = np.frombuffer(base64.b64decode(data["rows"]), dtype="<f4").reshape(data["rows_shape"]).copy()
        return cls._from_parts(data, FeatureState.from_dict(data["features"]), rows)

    @classmethod
    def _from_parts(cls, data: dict[str, Any], features: FeatureState, rows: np.ndarray) -> SymbolState:
        regime = data["regime"]
        return cls(
            symbol=data["symbol"],
            features=features,
            rows=rows,
            rows_filled=int(data["rows_filled"]),
            ensemble=EnsembleState.from_dict(data["ensemble"]),
            regime=None if regime is None else RegimeState(regime[0], regime[1], int(regime[2]), int(regime[3])),
            book=VirtualBook.from_dict(data["book"]),
            peak_equity=float(data["peak_equity"]),
            day_start_equity=float(data["day_start_equity"]),
            day=int(data["day"]),
            last_close_time=data["last_close_time"],
            recent=list(data["recent"]),
            recent_json=[orjson.dumps(signal) for signal in data["recent"]],
            model_version=data.get("model_version"),
        )


@dataclass(frozen=True, slots=True)
class Pending:
    """A bar ready to be scored: its window of feature rows and the ensemble weights in force."""

    symbol: str
    bar: Bar
    window: np.ndarray  # (window, F) float32
    weights: np.ndarray  # (members,)
    market: MarketFeatures


class SignalEngine:
    """Bars in, contract signals out; state lives in SymbolState objects that the caller keeps per symbol."""

    def __init__(
        self,
        bundle: ModelBundle,
        risk_config: RiskConfig | None = None,
        horizon: int | None = None,
        costs: FillCosts | None = None,
    ) -> None:
        self.bundle = bundle
        self.risk_config = risk_config or RiskConfig()
        self.horizon = horizon or bundle.horizon_minutes
        if self.horizon != bundle.horizon_minutes:
            raise ValueError(f"models were trained for {bundle.horizon_minutes} min, engine asked for {self.horizon}")
        self.costs = costs or FillCosts(self.risk_config.taker_fee_rate, self.risk_config.slippage_bps)
        self.window = bundle.window
        self.members = bundle.member_names
        self.config_key = risk_config_key(self.risk_config)

    def new_state(self, symbol: str) -> SymbolState:
        equity = self.risk_config.equity_usdt
        return SymbolState(
            symbol=symbol,
            features=FeatureState(symbol),
            rows=np.zeros((self.window, N_FEATURES), dtype=np.float32),
            rows_filled=0,
            ensemble=new_state(self.bundle.ensemble),
            peak_equity=equity,
            day_start_equity=equity,
            model_version=self.bundle.version,
        )

    def restore(self, state: SymbolState) -> SymbolState:
        """`adopt` a state read back from storage, once its ensemble memory is checked to fit the version in
        service where it is that version's (ValueError if not: a forged or foreign state, which the caller starts
        afresh)."""
        if state.model_version == self.bundle.version:
            reason = misfit(self.bundle.ensemble, state.ensemble)
            if reason is not None:
                raise ValueError(f"{state.symbol}: the ensemble memory {reason}")
        return self.adopt(state)

    def adopt(self, state: SymbolState) -> SymbolState:
        """Carry a symbol's state over from another model version: features, book and risk state stay; the
        ensemble memory (the other version's members' losses and pending predictions) starts afresh; feature
        rows are kept when the window has the same shape, else they fill again."""
        if state.model_version == self.bundle.version:
            return state
        state.ensemble = new_state(self.bundle.ensemble)
        if state.rows.shape != (self.window, N_FEATURES):
            state.rows = np.zeros((self.window, N_FEATURES), dtype=np.float32)
            state.rows_filled = 0
        state.model_version = self.bundle.version
        return state

    def equity(self, state: SymbolState, price: float) -> float:
        """Paper equity of the symbol's account, marked at `price`."""
        return self.risk_config.equity_usdt + state.book.realised_pnl_usdt + state.book.unrealised_pnl_usdt(price)

    def previous_signal(self, state: SymbolState, bar: Bar) -> dict[str, Any] | None:
        """The signal already emitted for this bar, if it is still among the last few."""
        for signal in reversed(state.recent):
            if signal["bar_close_time"] == bar.close_time:
                return signal
        return None

    def prepare(self, state: SymbolState, bar: Bar) -> Pending | None:
        """Advance the state with a closed bar; None for a redelivered or halted bar or while warming up."""
        return self.prepare_many([state], [bar])[0]

    def prepare_many(self, states: Sequence[SymbolState], bars: Sequence[Bar]) -> list[Pending | None]:
        """`prepare` for many symbols at once, one bar each (distinct states): the feature windows of all of
        them go through each kernel together (`update_many`); each result equals `prepare` alone."""
        moving: list[int] = []
        for i, (state, bar) in enumerate(zip(states, bars, strict=True)):
            if state.last_close_time is not None and bar.close_time <= state.last_close_time:
                continue
            state.last_close_time = bar.close_time
            if bar.halted:
                continue
            resolve(self.bundle.ensemble, state.ensemble, bar.open_time, bar.close)
            check_exits(state.book, bar, self.costs)
            moving.append(i)
        pendings: list[Pending | None] = [None] * len(states)
        rows = update_many([states[i].features for i in moving], [bars[i] for i in moving])
        full = [i for i, row in zip(moving, rows, strict=True) if self._push_row(states[i], row)]
        if full:  # the ensemble weights in force, of every full window at once
            in_force = weights_many(self.bundle.ensemble, [states[i].ensemble for i in full])
            for i, member_weights in zip(full, in_force, strict=True):
                state = states[i]
                market = state.features.market
                assert market is not None  # a row was pushed
                pendings[i] = Pending(state.symbol, bars[i], state.rows.copy(), member_weights, market)
        return pendings

    def _push_row(self, state: SymbolState, row: np.ndarray | None) -> bool:
        """Push a new feature row into the symbol's window; whether the window is full, and so must be scored."""
        if row is None or state.features.market is None:
            return False
        if state.features.count == WARMUP_BARS:
            state.rows_filled = 0  # a new segment after a reset: older rows belong to another market
        state.rows[:-1] = state.rows[1:]
        state.rows[-1] = row.astype(np.float32)
        state.rows_filled = min(state.rows_filled + 1, self.window)
        return state.rows_filled >= self.window

    def score(self, pendings: Sequence[Pending]) -> list[EnsemblePrediction]:
        """One inference call per model across all pending rows; each row's result is batch-independent."""
        if not pendings:
            return []
        windows = np.stack([p.window for p in pendings])
        probs = np.empty((len(pendings), len(self.bundle.members)))
        for j, member in enumerate(self.bundle.members):
            probs[:, j] = member.predict_proba(np.ascontiguousarray(windows[:, -member.window :, :]))
        return combine(self.bundle.ensemble, probs, np.stack([p.weights for p in pendings]))

    def finish(
        self,
        state: SymbolState,
        pending: Pending,
        prediction: EnsemblePrediction,
        extras: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Risk decision, virtual position update and the signal dict for one scored bar."""
        bar, market = pending.bar, pending.market
        remember(self.bundle.ensemble, state.ensemble, bar.open_time, bar.close, prediction.member_p_up)
        extras = extras or {}
        snapshot = MarketSnapshot(
            symbol=state.symbol,
            close_time_ms=bar.close_time,
            price=bar.close,
            atr=market.atr,
            sigma_1m=market.sigma_1m,
            vol_percentile=market.vol_percentile,
            adx=market.adx,
            trend=market.trend,
            return_1m=market.return_1m,
            volume_z=market.volume_z,
            trades_z=market.trades_z,
            mark_price=extras.get("mark_price"),
            spread_bps=extras.get("spread_bps"),
            depth_usdt=extras.get("depth_usdt"),
            book_imbalance=extras.get("book_imbalance"),
        )
        view = ModelView(prediction.p_up, prediction.confidence, prediction.disagreement, self.horizon)
        decision = decide(
            snapshot, view, state.book.position, self._portfolio(state, bar), state.regime, self.risk_config
        )
        state.regime = decision.regime_state
        if decision.signal_type == "close" and state.book.position is not None:
            close_position(state.book, bar.close, "signal", bar.close_time, self.costs)
        elif decision.signal_type in ("long", "short") and state.book.position is None:
            open_position(
                state.book,
                OpenPosition(
                    state.symbol,
                    decision.signal_type,
                    float(decision.quantity or 0.0),
                    float(decision.entry_price),
                    int(decision.recommended_leverage or 1),
                    float(decision.stop_loss_price or 0.0),
                    float(decision.take_profit_price or 0.0),
                    float(decision.liquidation_price or 0.0),
                    bar.close_time,
                ),
                self.costs,
            )
        signal = build_signal(
            state.symbol,
            bar.close_time,
            self.bundle.version,
            self.horizon,
            self.members,
            prediction,
            decision,
            market,
            extras,
            config_key=self.config_key,
        )
        state.recent = [*state.recent[-(RECENT_SIGNALS - 1) :], signal]
        state.recent_json = [*state.recent_json[-(RECENT_SIGNALS - 1) :], orjson.dumps(signal)]
        return signal

    def on_bar(self, state: SymbolState, bar: Bar, extras: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """prepare + score + finish for one symbol; a redelivered bar gets its earlier signal back."""
        if state.last_close_time is not None and bar.close_time <= state.last_close_time:
            return self.previous_signal(state, bar)
        pending = self.prepare(state, bar)
        if pending is None:
            return None
        (prediction,) = self.score([pending])
        return self.finish(state, pending, prediction, extras)

    def _portfolio(self, state: SymbolState, bar: Bar) -> PortfolioState:
        """The symbol's paper account as risk sees it; the day's starting equity rolls at 00:00 UTC."""
        equity = self.equity(state, bar.close)
        day = bar.close_time // DAY_MS
        if day != state.day:
            state.day = day
            state.day_start_equity = equity
        state.peak_equity = max(state.peak_equity, equity)
        positions = () if state.book.position is None else (state.book.position,)
        return PortfolioState(equity, state.peak_equity, state.day_start_equity, positions)
