"""Liquidation prices against the contract's checks and hand-worked exchange-formula examples.

Every expected value is worked out in the comments from the published formula
`LP = (WB + cum − s·Q·EP) / (Q·MMR − s·Q)`, `WB = Q·EP / leverage`.
"""

import pytest

from risk.liquidation import (
    BTCUSDT_BRACKETS,
    DEFAULT_BRACKETS,
    ETHUSDT_BRACKETS,
    BracketTable,
    MarginPosition,
    brackets_for,
    cross_liquidation_price,
    liquidation_price,
    maintenance_margin_usdt,
)


def test_contract_checks_for_half_a_btc_at_60000():
    assert liquidation_price("long", 60000.0, 0.5, 10, BTCUSDT_BRACKETS) == pytest.approx(54216.87, abs=0.005)
    assert liquidation_price("short", 60000.0, 0.5, 10, BTCUSDT_BRACKETS) == pytest.approx(65737.05, abs=0.005)
    assert liquidation_price("long", 60000.0, 0.5, 125, BTCUSDT_BRACKETS) == pytest.approx(59759.04, abs=0.005)


def test_btc_third_bracket_uses_its_maintenance_amount():
    # 20 BTC at 60,000 = 1.2M notional: bracket 600k–3M, MMR 0.65 %, cum = 50k·0.1 % + 600k·0.15 % = 950.
    # 20x: WB = 60,000.
    # long: (60,000 + 950 − 1,200,000) / (20·0.0065 − 20) = −1,139,050 / −19.87 = 57,325.1132
    # short: (60,000 + 950 + 1,200,000) / (0.13 + 20) = 1,260,950 / 20.13 = 62,640.3378
    assert liquidation_price("long", 60000.0, 20.0, 20, BTCUSDT_BRACKETS) == pytest.approx(57325.1132, abs=1e-3)
    assert liquidation_price("short", 60000.0, 20.0, 20, BTCUSDT_BRACKETS) == pytest.approx(62640.3378, abs=1e-3)


def test_eth_first_bracket():
    # 10 ETH at 3,000 = 30k notional: MMR 0.5 %, cum 0; 20x: WB = 1,500.
    # long: (1,500 − 30,000) / (0.05 − 10) = 2,864.3216; short: (1,500 + 30,000) / (0.05 + 10) = 3,134.3284
    assert liquidation_price("long", 3000.0, 10.0, 20, ETHUSDT_BRACKETS) == pytest.approx(2864.3216, abs=1e-3)
    assert liquidation_price("short", 3000.0, 10.0, 20, ETHUSDT_BRACKETS) == pytest.approx(3134.3284, abs=1e-3)


def test_maintenance_amounts_follow_by_continuity():
    # BTC: 50 → 950 → 11,450 → 131,450 → 481,450 → 2,981,450 → 20,231,450 → 32,231,450
    #      → 92,231,450 → 292,231,450
    expected_btc = [
        0.0,
        50.0,
        950.0,
        11450.0,
        131450.0,
        481450.0,
        2981450.0,
        20231450.0,
        32231450.0,
        92231450.0,
        292231450.0,
    ]
    assert [b.maintenance_amount_usdt for b in BTCUSDT_BRACKETS.brackets] == pytest.approx(expected_btc)
    # ETH bracket 3M–12M (2 %): cum = 50k·0.15 % + 600k·0.35 % + 3M·1 % = 75 + 2,100 + 30,000 = 32,175
    # maintenance margin at 5M: 5M·2 % − 32,175 = 67,825; at the 3M boundary both sides give 27,825
    assert maintenance_margin_usdt(5_000_000.0, ETHUSDT_BRACKETS) == pytest.approx(67825.0)
    assert maintenance_margin_usdt(3_000_000.0, ETHUSDT_BRACKETS) == pytest.approx(27825.0)
    assert maintenance_margin_usdt(3_000_000.01, ETHUSDT_BRACKETS) == pytest.approx(27825.0, abs=0.01)


def test_bracket_boundaries_and_leverage_caps():
    # exactly 50,000 notional still sits in the first bracket (125x); one cent more needs the 100x bracket
    assert BTCUSDT_BRACKETS.max_leverage_for_notional(50_000.0) == 125
    assert BTCUSDT_BRACKETS.max_leverage_for_notional(50_000.01) == 100
    assert ETHUSDT_BRACKETS.max_leverage_for_notional(60_000_000.0) == 20
    liquidation_price("long", 50_000.0, 1.0, 125, BTCUSDT_BRACKETS)
    with pytest.raises(ValueError, match="bracket maximum"):
        liquidation_price("long", 50_000.01, 1.0, 125, BTCUSDT_BRACKETS)
    with pytest.raises(ValueError, match="bracket maximum"):
        liquidation_price("short", 60000.0, 20.0, 76, BTCUSDT_BRACKETS)
    with pytest.raises(ValueError, match="largest bracket"):
        liquidation_price("long", 60000.0, 30_000.0, 1, BTCUSDT_BRACKETS)


def test_long_that_cannot_be_liquidated_returns_zero():
    # 1x long in the first bracket: (N + 0 − N) / (Q·MMR − Q) = 0 → cannot be liquidated
    assert liquidation_price("long", 60000.0, 0.5, 1, BTCUSDT_BRACKETS) == 0.0
    # 1x short: (N + N) / (Q·(1 + MMR)) = 2·60,000 / 1.004 = 119,521.91
    assert liquidation_price("short", 60000.0, 0.5, 1, BTCUSDT_BRACKETS) == pytest.approx(119521.91, abs=0.01)


@pytest.mark.parametrize(
    ("side", "entry", "quantity", "leverage"),
    [
        ("buy", 60000.0, 0.5, 10),
        ("LONG", 60000.0, 0.5, 10),
        ("long", 0.0, 0.5, 10),
        ("long", -1.0, 0.5, 10),
        ("long", float("nan"), 0.5, 10),
        ("long", float("inf"), 0.5, 10),
        ("short", 60000.0, 0.0, 10),
        ("short", 60000.0, -0.5, 10),
        ("short", 60000.0, 0.5, 0),
        ("short", 60000.0, 0.5, -3),
        ("long", 60000.0, 0.5, 126),
    ],
)
def test_bad_inputs_raise_value_error(side, entry, quantity, leverage):
    with pytest.raises(ValueError):
        liquidation_price(side, entry, quantity, leverage, BTCUSDT_BRACKETS)


def test_unknown_symbols_get_the_conservative_table():
    assert brackets_for("BTC/USDT") is BTCUSDT_BRACKETS
    assert brackets_for("ethusdt") is ETHUSDT_BRACKETS
    assert brackets_for("DOGEUSDT") is DEFAULT_BRACKETS
    assert DEFAULT_BRACKETS.brackets[0].max_leverage <= 20
    assert DEFAULT_BRACKETS.brackets[0].maintenance_margin_rate >= ETHUSDT_BRACKETS.brackets[0].maintenance_margin_rate


def test_malformed_tables_are_refused():
    with pytest.raises(ValueError):
        BracketTable.from_rows("X", [])
    with pytest.raises(ValueError, match="continue"):
        BracketTable.from_rows(
            "X",
            [
                {
                    "notional_floor_usdt": 0,
                    "notional_cap_usdt": 10,
                    "max_leverage": 10,
                    "maintenance_margin_rate": 0.01,
                },
                {
                    "notional_floor_usdt": 20,
                    "notional_cap_usdt": 30,
                    "max_leverage": 5,
                    "maintenance_margin_rate": 0.02,
                },
            ],
        )


def test_cross_margin_with_another_position():
    # Wallet 10,000; BTC long 0.5 @ 60,000 (bracket 1: MMR 0.4 %, cum 0);
    # ETH short 10 @ 3,000, mark 2,900: UPNL = −1·10·(2,900 − 3,000) = +1,000, MM = 29,000·0.5 % = 145.
    # LP = (10,000 − 145 + 1,000 + 0 − 30,000) / (0.5·0.004 − 0.5) = −19,145 / −0.498 = 38,443.7751
    btc = MarginPosition("BTCUSDT", "long", 0.5, 60000.0, 60000.0, BTCUSDT_BRACKETS)
    eth = MarginPosition("ETHUSDT", "short", 10.0, 3000.0, 2900.0, ETHUSDT_BRACKETS)
    assert cross_liquidation_price(btc, [eth], 10_000.0) == pytest.approx(38443.7751, abs=1e-3)


def test_cross_margin_alone_with_the_isolated_margin_equals_isolated():
    # with no other position and a wallet equal to the isolated margin (3,000 = 30,000 / 10)
    # both formulas agree
    btc = MarginPosition("BTCUSDT", "short", 0.5, 60000.0, 60000.0, BTCUSDT_BRACKETS)
    assert cross_liquidation_price(btc, [], 3000.0) == pytest.approx(65737.05, abs=0.005)
    with pytest.raises(ValueError, match="one-way"):
        cross_liquidation_price(btc, [btc], 3000.0)
