"""A bad setting stops start-up with a message that names it; good ones are read as given."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streams.config import Settings, SettingsError, normalise_symbol


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MLRISK_MAX_LEVERAGE", "0"),
        ("MLRISK_MAX_LEVERAGE", "126"),
        ("MLRISK_MAX_LEVERAGE", "ten"),
        ("MLRISK_BASE_POSITION_USDT", "-5"),
        ("MLRISK_BASE_POSITION_USDT", "nan"),
        ("MLRISK_BASE_POSITION_USDT", "0"),
        ("MLRISK_BASE_POSITION_USDT", "2e9"),
        ("MLRISK_BASE_POSITION_USDT", "-inf"),
        ("MLRISK_WEB_PORT", "70000"),
        ("MLRISK_KAFKA_BROKERS", "localhost"),
        ("MLRISK_SYMBOLS", "BTCUSDT,$$$"),
        ("MLRISK_TOPIC_PREFIX", "bad prefix"),
        ("MLRISK_PARTITIONS", "0"),
        ("MLRISK_PUBLISH_HOLD", "maybe"),
        ("MLRISK_LOG_LEVEL", "loud"),
        ("MLRISK_WORKER_STAGES", "signals,bars"),
        ("MLRISK_WORKER_STAGES", "sink,sink"),
        ("MLRISK_WORKER_STAGES", "ingest,,sink"),
    ],
)
def test_bad_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


def test_settings_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MLRISK_KAFKA_BROKERS": "kafka://k1:9092,k2:9093",
            "MLRISK_SYMBOLS": "btc/usdt, ETHUSDT",
            "MLRISK_TOPIC_PREFIX": "x-",
            "MLRISK_MAX_LEVERAGE": "20",
            "MLRISK_BASE_POSITION_USDT": "250.5",
        }
    )
    assert settings.bootstrap_servers == "k1:9092,k2:9093"
    assert settings.symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.signals_topic == "x-signals" and settings.dlq_topic == "x-market-data-dlq"
    assert (settings.risk.max_leverage, settings.risk.base_position_usdt) == (20, 250.5)


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.market_data_topic == "market-data"
    assert (settings.risk.base_position_usdt, settings.risk.max_leverage, settings.web_port) == (1000.0, 125, 6066)
    assert settings.database_url is None


def test_worker_stages_and_the_consumer_group_each_set_uses() -> None:
    default = Settings.from_env({"MLRISK_TOPIC_PREFIX": "x-"})
    assert default.worker_stages == ("ingest", "signals", "sink")
    assert default.faust_group_id == default.faust_app_id == "mlrisk-x-"  # the tables' changelogs keep their names
    apart = {
        raw: Settings.from_env({"MLRISK_TOPIC_PREFIX": "x-", "MLRISK_WORKER_STAGES": raw})
        for raw in ("signals", " Sink, ingest", "ingest", "signals,sink")
    }
    assert [s.worker_stages for s in apart.values()] == [
        ("signals",),
        ("ingest", "sink"),
        ("ingest",),
        ("signals", "sink"),
    ]
    # the signal stage owns the tables under the app's id; a sink apart from it reads every signal in its own group
    assert [s.faust_group_id for s in apart.values()] == [
        "mlrisk-x-",
        "mlrisk-x--sink",
        "mlrisk-x--ingest-only",
        "mlrisk-x-",
    ]


def test_symbol_spellings() -> None:
    assert {normalise_symbol(s) for s in ("BTC/USDT", "btcusdt", "BTC-USDT")} == {"BTCUSDT"}


def test_worker_refuses_to_start_on_a_bad_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "worker"],
        env={"PATH": "/usr/bin:/bin", "MLRISK_MAX_LEVERAGE": "500"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MLRISK_MAX_LEVERAGE" in result.stderr
