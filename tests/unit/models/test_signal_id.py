"""A signal's id is RFC 4122's name-based UUID (version 5) of the bar it decides: the standard library's
`uuid.uuid5` is the reference it must equal, for every kind of name."""

from __future__ import annotations

import uuid

from models.signal import SIGNAL_NAMESPACE, signal_id


def test_the_id_is_the_uuid5_of_symbol_close_version_and_risk_settings() -> None:
    cases = [
        ("BTCUSDT", 1_717_400_000_000, "v20240603-1", "3f9a0c1d2e4b5a69"),
        ("ETHUSDT", 1_721_347_259_999, "quick", ""),
        ("1000PEPEUSDT", 0, "", ""),
        ("ÄÖÜUSDT", 2**53, "version with spaces|and a bar", "k" * 64),
    ] + [(f"S{i}USDT", 1_700_000_000_000 + i * 60_000, f"v{i % 7}", f"{i:016x}") for i in range(500)]
    for symbol, close, version, key in cases:
        expected = uuid.uuid5(SIGNAL_NAMESPACE, f"{symbol}|{close}|{version}|{key}")
        made = signal_id(symbol, close, version, key)
        assert made == str(expected), (symbol, close, version, key)
        assert uuid.UUID(made).version == 5 and uuid.UUID(made).variant == uuid.RFC_4122


def test_ids_differ_where_any_part_differs() -> None:
    base = ("BTCUSDT", 1_717_400_000_000, "v1", "a")
    variants = [
        ("ETHUSDT", *base[1:]),
        (base[0], base[1] + 60_000, *base[2:]),
        (*base[:2], "v2", "a"),
        (*base[:3], "b"),
    ]
    ids = {signal_id(*base), *(signal_id(*v) for v in variants)}
    assert len(ids) == 5
