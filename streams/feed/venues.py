"""What differs between Binance's spot and USD-M futures market data: endpoints, paths, limits, stream names."""

from __future__ import annotations

from dataclasses import dataclass

# the streams a user may ask for; `depth` is the venue's 100 ms diff stream
STREAM_KINDS = ("trade", "aggTrade", "bookTicker", "depth", "markPrice", "kline_1m")
DEFAULT_STREAMS = ("trade", "bookTicker", "depth")


@dataclass(frozen=True, slots=True)
class Venue:
    """One Binance market's endpoints, REST paths and weights, and limits."""

    name: str
    futures: bool
    ws_url: str  # documented production endpoints
    rest_url: str
    depth_path: str
    trades_path: str  # historicalTrades: every trade, from an id
    agg_trades_path: str
    depth_limit: int
    depth_weight: int  # of a snapshot at depth_limit levels
    trades_weight: int
    agg_trades_weight: int
    weight_per_minute: int  # the IP's request weight per minute
    max_streams_per_connection: int

    def stream_name(self, symbol: str, kind: str) -> str:
        """Binance's stream name for a symbol and a kind of `STREAM_KINDS`."""
        channel = {"depth": "depth@100ms", "markPrice": "markPrice@1s"}.get(kind, kind)
        return f"{symbol.lower()}@{channel}"


VENUES: dict[str, Venue] = {
    "binance-usdm": Venue(
        name="binance-usdm",
        futures=True,
        ws_url="wss://fstream.binance.com",
        rest_url="https://fapi.binance.com",
        depth_path="/fapi/v1/depth",
        trades_path="/fapi/v1/historicalTrades",
        agg_trades_path="/fapi/v1/aggTrades",
        depth_limit=1000,
        depth_weight=20,
        trades_weight=20,
        agg_trades_weight=20,
        weight_per_minute=2400,
        max_streams_per_connection=1024,
    ),
    "binance-spot": Venue(
        name="binance-spot",
        futures=False,
        ws_url="wss://stream.binance.com:9443",
        rest_url="https://api.binance.com",
        depth_path="/api/v3/depth",
        trades_path="/api/v3/historicalTrades",
        agg_trades_path="/api/v3/aggTrades",
        depth_limit=1000,
        depth_weight=50,
        trades_weight=25,
        agg_trades_weight=4,
        weight_per_minute=6000,
        max_streams_per_connection=1024,
    ),
}
