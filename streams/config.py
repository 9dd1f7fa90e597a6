"""The one configuration object: read from the environment once, validated at start-up.

A bad setting stops start-up with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A configuration variable has a value the system cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    kafka_brokers: str = "kafka://localhost:9092"
    database_url: str | None = None
    home: Path = REPO_ROOT / ".mlrisk"
    model_dir: Path = REPO_ROOT / "artifacts" / "models"
    symbols: tuple[str, ...] = ()
    topic_prefix: str = ""
    base_position_usdt: float = 1000.0
    max_leverage: int = 125
    web_port: int = 6066
    web_host: str = "0.0.0.0"
    app_id: str = "mlrisk"
    partitions: int = 4
    allowed_lateness_ms: int = 3_000
    max_future_ms: int = 3_600_000
    session_timeout_s: float = 10.0
    model_poll_s: float = 10.0
    publish_hold: bool = False
    log_level: str = "warn"
    extra: Mapping[str, str] = field(default_factory=dict)

    # topics, each under the common prefix so that tests can use fresh, unique names
    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def market_data_topic(self) -> str:
        return self.topic("market-data")

    @property
    def dlq_topic(self) -> str:
        return self.topic("market-data-dlq")

    @property
    def bars_topic(self) -> str:
        return self.topic("bars")

    @property
    def signals_topic(self) -> str:
        return self.topic("signals")

    @property
    def executions_topic(self) -> str:
        return self.topic("executions")

    @property
    def faust_app_id(self) -> str:
        """The consumer group and the prefix of the changelog topics."""
        return f"{self.app_id}-{self.topic_prefix}" if self.topic_prefix else self.app_id

    @property
    def bootstrap_servers(self) -> str:
        """The brokers as aiokafka wants them: host:port,host:port without the kafka:// scheme."""
        servers = []
        for part in self.kafka_brokers.split(";") if ";" in self.kafka_brokers else self.kafka_brokers.split(","):
            part = part.strip()
            if "://" in part:
                part = part.split("://", 1)[1]
            servers.append(part)
        return ",".join(servers)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every MLRISK_* variable (and DATABASE_URL); raise SettingsError naming the first bad one."""
        env = os.environ if env is None else env
        defaults = cls()
        home = Path(env.get("MLRISK_HOME", str(defaults.home)))
        return cls(
            kafka_brokers=_brokers(env, "MLRISK_KAFKA_BROKERS", defaults.kafka_brokers),
            database_url=env.get("DATABASE_URL") or None,
            home=home,
            model_dir=Path(env.get("MLRISK_MODEL_DIR", str(defaults.model_dir))),
            symbols=_symbols(env, "MLRISK_SYMBOLS"),
            topic_prefix=_topic_prefix(env, "MLRISK_TOPIC_PREFIX"),
            base_position_usdt=_number(env, "MLRISK_BASE_POSITION_USDT", defaults.base_position_usdt, 1.0, 1e9),
            max_leverage=_integer(env, "MLRISK_MAX_LEVERAGE", defaults.max_leverage, 1, 125),
            web_port=_integer(env, "MLRISK_WEB_PORT", defaults.web_port, 1, 65535),
            web_host=env.get("MLRISK_WEB_HOST", defaults.web_host),
            app_id=_name(env, "MLRISK_APP_ID", defaults.app_id),
            partitions=_integer(env, "MLRISK_PARTITIONS", defaults.partitions, 1, 1024),
            allowed_lateness_ms=_integer(
                env, "MLRISK_ALLOWED_LATENESS_MS", defaults.allowed_lateness_ms, 0, 600_000
            ),
            max_future_ms=_integer(env, "MLRISK_MAX_FUTURE_MS", defaults.max_future_ms, 0, 7 * 86_400_000),
            session_timeout_s=_number(env, "MLRISK_SESSION_TIMEOUT_S", defaults.session_timeout_s, 6.0, 300.0),
            model_poll_s=_number(env, "MLRISK_MODEL_POLL_S", defaults.model_poll_s, 0.5, 3600.0),
            publish_hold=_flag(env, "MLRISK_PUBLISH_HOLD", defaults.publish_hold),
            log_level=_choice(env, "MLRISK_LOG_LEVEL", defaults.log_level, ("crit", "error", "warn", "info", "debug")),
        )


def normalise_symbol(raw: str) -> str:
    """`btc/usdt`, `BTC-USDT` and `BTCUSDT` all name BTCUSDT."""
    return raw.replace("/", "").replace("-", "").replace("_", "").strip().upper()


def _integer(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer in {lo}..{hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be an integer in {lo}..{hi}, got {value}")
    return value


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number in {lo:g}..{hi:g}, got {raw!r}") from None
    if not lo <= value <= hi:  # also rejects NaN
        raise SettingsError(f"{name} must be a number in {lo:g}..{hi:g}, got {raw}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not all(c.isalnum() or c in "-_." for c in raw):
        raise SettingsError(f"{name} may hold letters, digits, '-', '_' and '.', got {raw!r}")
    return raw


def _topic_prefix(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "")
    if raw and (len(raw) > 200 or not all(c.isalnum() or c in "-_." for c in raw)):
        raise SettingsError(f"{name} may hold letters, digits, '-', '_' and '.' (at most 200), got {raw!r}")
    return raw


def _symbols(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    symbols = tuple(normalise_symbol(s) for s in raw.split(",") if s.strip())
    for symbol in symbols:
        if not symbol.isalnum() or not 3 <= len(symbol) <= 20:
            raise SettingsError(f"{name} must list symbols like BTCUSDT,ETHUSDT, got {raw!r}")
    return symbols


def _brokers(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    for part in raw.replace(";", ",").split(","):
        host_port = part.strip().split("://", 1)[-1]
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{name} must list brokers as kafka://host:port[,host:port], got {raw!r}")
    return raw
