"""The one configuration of the risk engine: frozen, and validated when it is made."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from risk.liquidation import BracketTable, brackets_for
from risk.portfolio import PortfolioLimits
from risk.regime import RegimeConfig
from risk.stops import StopSettings
from risk.types import REGIMES

# Volatile markets halve the volatility leverage cap; a liquidation event allows none.
DEFAULT_REGIME_LEVERAGE_FACTOR: Mapping[str, float] = MappingProxyType(
    {"trending_up": 1.0, "trending_down": 1.0, "ranging": 1.0, "volatile": 0.5, "liquidation_event": 0.0}
)


def _empty_brackets() -> Mapping[str, BracketTable]:
    return MappingProxyType({})


MAX_NOTIONAL_USDT = 1e9  # the database keeps sizes as DECIMAL(15,6): below a billion


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """Every setting of the risk decision. Invalid values raise ValueError naming the field."""

    base_position_usdt: float = 1000.0  # MLRISK_BASE_POSITION_USDT
    max_leverage: int = 125  # MLRISK_MAX_LEVERAGE
    taker_fee_rate: float = 0.0004  # per side
    slippage_bps: float = 1.0  # per side
    min_liquidation_buffer: float = 0.005  # |stop − liquidation| ≥ this × entry
    equity_usdt: float = 10_000.0  # starting equity of a fresh (paper) account
    risk_fraction: float = 0.01  # equity lost at the stop, at most
    kelly_fraction: float = 0.25  # share of the Kelly stake
    min_edge_to_cost: float = 1.25  # expected gross edge must exceed round-trip cost by this factor
    close_conviction: float = 0.05  # |p_up − 0.5| against an open position that closes it
    close_min_confidence: float = 0.1
    strong_signal_confidence: float = 0.7
    leverage_adverse_sigmas: float = 3.0
    leverage_max_margin_loss: float = 0.5  # share of margin an adverse move of that many σ may cost
    stops: StopSettings = field(default_factory=StopSettings)
    limits: PortfolioLimits = field(default_factory=PortfolioLimits)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    regime_leverage_factor: Mapping[str, float] = field(default_factory=lambda: DEFAULT_REGIME_LEVERAGE_FACTOR)
    brackets: Mapping[str, BracketTable] = field(default_factory=_empty_brackets)  # overrides per symbol

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_leverage, bool)
            or not isinstance(self.max_leverage, int)
            or not 1 <= self.max_leverage <= 125
        ):
            raise ValueError(f"max_leverage must be an integer in 1..125, got {self.max_leverage!r}")
        positive = ("base_position_usdt", "equity_usdt", "leverage_adverse_sigmas")
        for name in positive:
            value = getattr(self, name)
            if not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.base_position_usdt > MAX_NOTIONAL_USDT:
            raise ValueError(
                f"base_position_usdt must be at most {MAX_NOTIONAL_USDT:.0e}, got {self.base_position_usdt!r}"
            )
        fractions = (
            "taker_fee_rate",
            "min_liquidation_buffer",
            "risk_fraction",
            "kelly_fraction",
            "leverage_max_margin_loss",
            "strong_signal_confidence",
            "close_min_confidence",
        )
        for name in fractions:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        if not 0.0 <= self.slippage_bps < 10_000.0:
            raise ValueError(f"slippage_bps must lie in [0, 10000), got {self.slippage_bps!r}")
        if not 0.0 <= self.min_edge_to_cost < math.inf:
            raise ValueError(f"min_edge_to_cost must be a non-negative finite number, got {self.min_edge_to_cost!r}")
        if not 0.0 <= self.close_conviction <= 0.5:
            raise ValueError(f"close_conviction must lie in [0, 0.5], got {self.close_conviction!r}")
        if set(self.regime_leverage_factor) != set(REGIMES) or not all(
            0.0 <= factor <= 1.0 for factor in self.regime_leverage_factor.values()
        ):
            raise ValueError("regime_leverage_factor must give every regime a factor in [0, 1]")

    @property
    def round_trip_cost_fraction(self) -> float:
        """Fees and slippage of opening and closing a position, as a fraction of its notional."""
        return 2.0 * self.taker_fee_rate + 2.0 * self.slippage_bps / 10_000.0

    def brackets_for_symbol(self, symbol: str) -> BracketTable:
        """The configured bracket table of a symbol, else the shipped one (or the conservative default)."""
        return self.brackets.get(symbol, None) or brackets_for(symbol)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RiskConfig:
        """A config from environment variables (passed in: risk reads no environment itself).

        Reads MLRISK_BASE_POSITION_USDT, MLRISK_MAX_LEVERAGE, MLRISK_EQUITY_USDT, MLRISK_TAKER_FEE_RATE,
        MLRISK_SLIPPAGE_BPS and MLRISK_MIN_EDGE_TO_COST; a bad value raises ValueError naming the variable.
        """
        settings: dict[str, float | int] = {}
        readers = (
            ("MLRISK_BASE_POSITION_USDT", "base_position_usdt", float),
            ("MLRISK_MAX_LEVERAGE", "max_leverage", int),
            ("MLRISK_EQUITY_USDT", "equity_usdt", float),
            ("MLRISK_TAKER_FEE_RATE", "taker_fee_rate", float),
            ("MLRISK_SLIPPAGE_BPS", "slippage_bps", float),
            ("MLRISK_MIN_EDGE_TO_COST", "min_edge_to_cost", float),
        )
        for variable, name, parse in readers:
            text = environ.get(variable)
            if text is None or not text.strip():
                continue
            try:
                settings[name] = parse(text)
            except ValueError:
                raise ValueError(f"{variable} must be a number, got {text!r}") from None
        try:
            return cls(**settings)  # type: ignore[arg-type]
        except ValueError as error:
            for variable, name, _ in readers:
                if str(error).startswith(name):
                    raise ValueError(f"{variable}: {error}") from None
            raise
