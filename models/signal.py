"""Assemble the contract's ActionableTradeSignal (a plain dict of JSON numbers) and check its invariants."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, cast

from models.bars import iso_utc
from models.ensemble import EnsemblePrediction
from models.features import MarketFeatures
from risk.config import RiskConfig
from risk.decision import invariant_violations as decision_invariant_violations
from risk.types import POSITION_FIELDS, RiskDecision

SCHEMA_VERSION = 1
SIGNAL_NAMESPACE = uuid.UUID("6f1d2c1e-8a5b-4f9e-9a51-3c2f0e7d4b10")
EXTRA_KEYS = ("mark_price", "spread_bps", "depth_usdt", "book_imbalance")


_NAMESPACE_BYTES = SIGNAL_NAMESPACE.bytes


def signal_id(symbol: str, bar_close_time_ms: int, model_version: str, risk_config_key: str = "") -> str:
    """uuid5 of (symbol, bar close, model version, risk configuration): a replayed bar gets the same id, so sinks
    deduplicate; the same bar decided under other risk settings is another signal.

    RFC 4122's name-based UUID written out directly (`uuid.uuid5` gives the same text, at more than twice the cost on
    a path that runs for every symbol of every minute): SHA-1 of the namespace and the name, version 5, variant 1.
    """
    name = f"{symbol}|{bar_close_time_ms}|{model_version}|{risk_config_key}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def risk_config_key(config: RiskConfig) -> str:
    """A short, stable fingerprint of the risk settings that shape a decision."""
    return hashlib.sha256(repr(config).encode()).hexdigest()[:16]


def _num(value: float | None) -> float | None:
    """A plain float, or None for a missing or non-finite value (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _num(v) if isinstance(v, int | float) else v for k, v in values.items()}


def build_signal(
    symbol: str,
    bar_close_time_ms: int,
    model_version: str,
    horizon_minutes: int,
    members: tuple[str, ...],
    prediction: EnsemblePrediction,
    decision: RiskDecision,
    market: MarketFeatures,
    extras: Mapping[str, Any] | None = None,
    config_key: str = "",
) -> dict[str, Any]:
    """The signal for one bar: ensemble and risk fields, contributions per model, the metadata behind them.

    The timestamp is the bar's close (the end of its minute), taken from the bar and never from a clock.
    """
    hold = decision.signal_type == "hold"
    depth = {k: extras[k] for k in EXTRA_KEYS if extras is not None and extras.get(k) is not None}
    leverage = None if hold or decision.recommended_leverage is None else int(decision.recommended_leverage)
    return {
        "schema_version": SCHEMA_VERSION,
        "signal_id": signal_id(symbol, bar_close_time_ms, model_version, config_key),
        "symbol": symbol,
        "timestamp": iso_utc(bar_close_time_ms - 59_999),  # the bar's minute, as in the contract's example
        "bar_close_time": int(bar_close_time_ms),
        "signal_type": decision.signal_type,
        "signal_strength": decision.signal_strength,
        "confidence_score": float(decision.confidence_score),
        "ml_confidence": float(prediction.confidence),
        "ml_prediction": prediction.prediction,
        "risk_level": decision.risk_level,
        "market_regime": decision.market_regime,
        "entry_price": float(decision.entry_price),
        "recommended_leverage": leverage,
        "position_size_usdt": None if hold else _num(decision.position_size_usdt),
        "quantity": None if hold else _num(decision.quantity),
        "stop_loss_price": None if hold else _num(decision.stop_loss_price),
        "take_profit_price": None if hold else _num(decision.take_profit_price),
        "risk_reward_ratio": None if hold else _num(decision.risk_reward_ratio),
        "liquidation_price": None if hold else _num(decision.liquidation_price),
        "risk_score": float(decision.risk_score),
        "liquidation_risk": float(decision.liquidation_risk),
        "portfolio_impact": float(decision.portfolio_impact),
        "volatility_score": float(decision.volatility_score),
        "liquidity_score": float(decision.liquidity_score),
        "model_contributions": prediction.contributions(members),
        "model_version": model_version,
        "latency_ms": 0.0,
        "metadata": {
            "horizon_minutes": int(horizon_minutes),
            "p_up": prediction.p_up,
            "disagreement": prediction.disagreement,
            "risk_components": _mapping(decision.risk_components),
            "reasons": list(decision.reasons),
            "trading_state": decision.trading_state,
            "regime_indicators": {
                "atr": _num(market.atr),
                "sigma_1m": _num(market.sigma_1m),
                "vol_percentile": _num(market.vol_percentile),
                "adx": _num(market.adx),
                "trend": _num(market.trend),
                "return_1m": _num(market.return_1m),
                "volume_z": _num(market.volume_z),
                "trades_z": _num(market.trades_z),
            },
            "risk_adjusted_positions": {
                "base_position_size": _num(decision.base_position_size),
                "risk_adjusted_size": None if hold else _num(decision.position_size_usdt),
                "leverage_multiplier": _num(decision.leverage_multiplier),
                "stop_loss_adjustment": _num(decision.stop_loss_adjustment),
                "take_profit_adjustment": _num(decision.take_profit_adjustment),
                "confidence_boost": _num(decision.confidence_boost),
                "risk_factors": _mapping(decision.risk_factors),
            },
            "market_depth_analysis": depth,
        },
    }


_DECISION_FIELDS = (
    "symbol",
    "signal_type",
    "market_regime",
    "entry_price",
    *POSITION_FIELDS,
    "risk_score",
    "liquidation_risk",
    "confidence_score",
)


def invariant_violations(signal: Mapping[str, Any], config: RiskConfig) -> list[str]:
    """Every contract invariant a signal breaks (empty if none): the risk library's own check, on the fields
    the signal carries."""
    view = SimpleNamespace(**{name: signal[name] for name in _DECISION_FIELDS})
    return decision_invariant_violations(cast(RiskDecision, view), config)
