"""Messages shaped as the system makes them, for tests that need one without running the engine."""

from __future__ import annotations

import uuid
from typing import Any


def signal_like(**changes: Any) -> dict[str, Any]:
    """A long signal shaped as the engine makes them (models.signal.build_signal)."""
    signal = {
        "schema_version": 1,
        "signal_id": str(uuid.uuid4()),
        "symbol": "QUARUSDT",
        "timestamp": "2024-08-08T23:54:00Z",
        "bar_close_time": 1_723_161_299_999,
        "signal_type": "long",
        "signal_strength": "buy",
        "confidence_score": 0.61,
        "ml_confidence": 0.2,
        "ml_prediction": "up",
        "risk_level": "low",
        "market_regime": "ranging",
        "entry_price": 61807.8,
        "recommended_leverage": 5,
        "position_size_usdt": 488.0,
        "quantity": 0.0079,
        "stop_loss_price": 61500.0,
        "take_profit_price": 62300.0,
        "risk_reward_ratio": 1.6,
        "liquidation_price": 55000.0,
        "risk_score": 20.0,
        "liquidation_risk": 3.0,
        "portfolio_impact": 0.05,
        "volatility_score": 0.3,
        "liquidity_score": 0.9,
        "model_contributions": {"lightgbm": {"p_up": 0.6, "weight": 1.0}},
        "model_version": "v-test",
        "latency_ms": 1.5,
        "metadata": {
            "p_up": 0.6,
            "risk_adjusted_positions": {
                "base_position_size": 1000.0,
                "risk_adjusted_size": 488.0,
                "leverage_multiplier": 1.0,
                "stop_loss_adjustment": 1.0,
                "take_profit_adjustment": 1.0,
                "confidence_boost": 0.1,
                "risk_factors": {},
            },
        },
    }
    signal.update(changes)
    return signal
