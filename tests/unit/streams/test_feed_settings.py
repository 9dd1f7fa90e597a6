"""The feed's settings: endpoints default to the venue's, and a bad value stops start-up naming the variable."""

from __future__ import annotations

import pytest

from streams.config import Settings, SettingsError
from streams.feed.service import check_request, connection_groups
from streams.feed.venues import VENUES


def test_endpoints_are_the_venues_unless_set() -> None:
    settings = Settings.from_env({})
    assert (settings.binance_ws_url, settings.binance_rest_url) == ("", "")
    assert VENUES["binance-usdm"].ws_url == "wss://fstream.binance.com"
    assert VENUES["binance-spot"].rest_url == "https://api.binance.com"
    custom = Settings.from_env({"MLRISK_BINANCE_WS_URL": "wss://testnet.example/", "MLRISK_FEED_SILENCE_S": "5"})
    assert custom.binance_ws_url == "wss://testnet.example" and custom.feed_silence_s == 5.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MLRISK_BINANCE_WS_URL", "https://fstream.binance.com"),
        ("MLRISK_BINANCE_REST_URL", "fapi.binance.com"),
        ("MLRISK_FEED_SILENCE_S", "0"),
        ("MLRISK_FEED_MAX_STREAMS", "1025"),
        ("MLRISK_FEED_BUFFER_MESSAGES", "10"),
        ("MLRISK_FEED_ROTATE_AFTER_S", "90000"),
    ],
)
def test_a_bad_feed_setting_names_itself(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_streams_split_over_connections_keep_a_symbols_streams_together() -> None:
    venue = VENUES["binance-usdm"]
    symbols = [f"SYM{i}USDT" for i in range(10)]
    groups = connection_groups(venue, venue.ws_url, symbols, ("trade", "depth", "markPrice"), max_streams=7)
    assert [len(g) for g in groups] == [6, 6, 6, 6, 6]  # two symbols (six streams) fit in seven
    assert groups[0] == [
        "sym0usdt@trade",
        "sym0usdt@depth@100ms",
        "sym0usdt@markPrice@1s",
        "sym1usdt@trade",
        "sym1usdt@depth@100ms",
        "sym1usdt@markPrice@1s",
    ]
    many = [f"S{i:05d}USDT" for i in range(1000)]
    for group in connection_groups(venue, venue.ws_url, many, ("trade", "bookTicker", "depth"), max_streams=1024):
        assert len(group) <= 1024 and len(f"{venue.ws_url}/stream?streams={'/'.join(group)}") <= 8_000


def test_requests_the_venue_cannot_serve_are_refused() -> None:
    with pytest.raises(ValueError, match="markPrice exists on binance-usdm only"):
        check_request(VENUES["binance-spot"], ["BTCUSDT"], ("trade", "markPrice"))
    with pytest.raises(ValueError, match="not one of"):
        check_request(VENUES["binance-usdm"], ["BTCUSDT"], ("trades",))
    with pytest.raises(ValueError, match="not a symbol"):
        check_request(VENUES["binance-usdm"], ["BTC/USDT?"], ("trade",))
