"""The one configuration object: read from the environment once, validated at start-up.

A bad setting stops start-up with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from risk.config import RiskConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# what one worker process can run: each stage once across the processes of a deployment (see Settings.faust_group_id)
WORKER_STAGES = ("ingest", "signals", "sink")


class SettingsError(ValueError):
    """A configuration variable has a value the system cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    kafka_brokers: str = "kafka://localhost:9092"
    # secrets stay out of reprs (and so out of logs and tracebacks)
    database_url: str | None = field(default=None, repr=False)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_replication_factor: int = 1
    create_topics: bool = True
    web_bind: str = "127.0.0.1"
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    metrics_require_token: bool = False
    allow_anonymous: bool = False
    home: Path = REPO_ROOT / ".mlrisk"
    model_dir: Path = REPO_ROOT / "artifacts" / "models"
    symbols: tuple[str, ...] = ()
    topic_prefix: str = ""
    risk: RiskConfig = field(default_factory=RiskConfig)  # the risk engine's settings, read by `RiskConfig`
    web_port: int = 6066
    web_host: str = "0.0.0.0"
    app_id: str = "mlrisk"
    partitions: int = 4
    allowed_lateness_ms: int = 3_000
    max_future_ms: int = 5_000
    max_symbols: int = 300
    session_timeout_s: float = 10.0
    stop_timeout_s: float = 10.0
    health_stall_s: float = 10.0
    model_poll_s: float = 10.0
    publish_hold: bool = False
    worker_stages: tuple[str, ...] = WORKER_STAGES
    log_level: str = "warn"
    # `mlrisk feed`: empty URLs mean the venue's documented production endpoints
    binance_ws_url: str = ""
    binance_rest_url: str = ""
    binance_api_key: str | None = field(default=None, repr=False)
    feed_silence_s: float = 30.0
    feed_max_streams: int = 1024
    feed_rotate_after_s: float = 23 * 3600.0
    feed_buffer_messages: int = 20_000
    feed_port: int = 6067
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
    def internal_dlq_topic(self) -> str:
        """Where invalid messages of the internal topics (bars, signals, executions) are parked."""
        return self.topic("internal-dlq")

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
    def faust_group_id(self) -> str:
        """The Faust app's id, its consumer group. The signal stage's tables live under `faust_app_id`, so a worker
        with that stage (all of them, by default) uses it. A worker with the sink but not the signal stage reads
        `signals` and `executions` in a group of its own, so that it sinks every signal whichever worker made it;
        one with ingest alone reads nothing through Faust, and still keeps out of the others' groups."""
        if "signals" in self.worker_stages:
            return self.faust_app_id
        return f"{self.faust_app_id}-{'sink' if 'sink' in self.worker_stages else 'ingest-only'}"

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
            **_kafka_security(env),
            kafka_replication_factor=_integer(
                env, "MLRISK_KAFKA_REPLICATION_FACTOR", defaults.kafka_replication_factor, 1, 32
            ),
            create_topics=_flag(env, "MLRISK_CREATE_TOPICS", defaults.create_topics),
            **_web_access(env),
            home=home,
            model_dir=Path(env.get("MLRISK_MODEL_DIR", str(defaults.model_dir))),
            symbols=_symbols(env, "MLRISK_SYMBOLS"),
            topic_prefix=_topic_prefix(env, "MLRISK_TOPIC_PREFIX"),
            risk=_risk(env),
            web_port=_integer(env, "MLRISK_WEB_PORT", defaults.web_port, 1, 65535),
            web_host=env.get("MLRISK_WEB_HOST", defaults.web_host),
            app_id=_name(env, "MLRISK_APP_ID", defaults.app_id),
            partitions=_integer(env, "MLRISK_PARTITIONS", defaults.partitions, 1, 1024),
            allowed_lateness_ms=_integer(env, "MLRISK_ALLOWED_LATENESS_MS", defaults.allowed_lateness_ms, 0, 600_000),
            max_future_ms=_integer(env, "MLRISK_MAX_FUTURE_MS", defaults.max_future_ms, 0, 3_600_000),
            max_symbols=_integer(env, "MLRISK_MAX_SYMBOLS", defaults.max_symbols, 1, 100_000),
            session_timeout_s=_number(env, "MLRISK_SESSION_TIMEOUT_S", defaults.session_timeout_s, 6.0, 300.0),
            stop_timeout_s=_number(env, "MLRISK_STOP_TIMEOUT_S", defaults.stop_timeout_s, 1.0, 600.0),
            health_stall_s=_number(env, "MLRISK_HEALTH_STALL_S", defaults.health_stall_s, 2.0, 3600.0),
            model_poll_s=_number(env, "MLRISK_MODEL_POLL_S", defaults.model_poll_s, 0.5, 3600.0),
            publish_hold=_flag(env, "MLRISK_PUBLISH_HOLD", defaults.publish_hold),
            worker_stages=_stages(env, "MLRISK_WORKER_STAGES"),
            log_level=_choice(env, "MLRISK_LOG_LEVEL", defaults.log_level, ("crit", "error", "warn", "info", "debug")),
            binance_ws_url=_url(env, "MLRISK_BINANCE_WS_URL", ("ws://", "wss://")),
            binance_rest_url=_url(env, "MLRISK_BINANCE_REST_URL", ("http://", "https://")),
            binance_api_key=env.get("MLRISK_BINANCE_API_KEY") or None,
            feed_silence_s=_number(env, "MLRISK_FEED_SILENCE_S", defaults.feed_silence_s, 0.2, 600.0),
            feed_max_streams=_integer(env, "MLRISK_FEED_MAX_STREAMS", defaults.feed_max_streams, 1, 1024),
            feed_rotate_after_s=_number(env, "MLRISK_FEED_ROTATE_AFTER_S", defaults.feed_rotate_after_s, 1.0, 86_000.0),
            feed_buffer_messages=_integer(
                env, "MLRISK_FEED_BUFFER_MESSAGES", defaults.feed_buffer_messages, 100, 1_000_000
            ),
            feed_port=_integer(env, "MLRISK_FEED_PORT", defaults.feed_port, 1, 65535),
        )


def _risk(env: Mapping[str, str]) -> RiskConfig:
    """The risk settings (MLRISK_BASE_POSITION_USDT, MLRISK_MAX_LEVERAGE, costs, equity), read once for the worker
    and the backtest alike."""
    try:
        return RiskConfig.from_env(env)
    except ValueError as error:
        raise SettingsError(str(error)) from None


def normalise_symbol(raw: str) -> str:
    """`btc/usdt`, `BTC-USDT` and `BTCUSDT` all name BTCUSDT."""
    return raw.replace("/", "").replace("-", "").replace("_", "").strip().upper()


SYMBOL = re.compile(r"[A-Z0-9]{2,20}")


def parse_symbol(raw: str) -> str | None:
    """The symbol `raw` names (see `normalise_symbol`), or None unless that is 2 to 20 ASCII capitals and digits:
    look-alikes such as full-width letters are other symbols to the exchange, and unbounded names unbounded state."""
    if len(raw) > 64 or not raw.isascii():  # before upper(): "ß".upper() is "SS"
        return None
    symbol = normalise_symbol(raw)
    return symbol if SYMBOL.fullmatch(symbol) else None


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


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip()
    if raw and (len(raw) > 500 or not raw.startswith(schemes) or " " in raw):
        raise SettingsError(f"{name} must be a URL starting with {' or '.join(schemes)}, got {raw!r}")
    return raw.rstrip("/")


def _stages(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated subset of WORKER_STAGES, each once; unset or empty: all of them. Kept in flow order."""
    raw = env.get(name, "")
    if not raw.strip():
        return WORKER_STAGES
    stages = [part.strip().lower() for part in raw.split(",")]
    if any(stage not in WORKER_STAGES for stage in stages) or len(set(stages)) != len(stages):
        raise SettingsError(f"{name} must list stages of {', '.join(WORKER_STAGES)}, each once, got {raw!r}")
    return tuple(stage for stage in WORKER_STAGES if stage in stages)


def _symbols(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    symbols = tuple(parse_symbol(s) or "" for s in raw.split(",") if s.strip())
    if not all(symbols):
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


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAX_SECRET_BYTES = 4096
MAX_API_TOKENS = 100
MIN_API_TOKEN_CHARS = 16


def _secret_file(name: str, raw: str) -> str:
    """The text of a secret file without its final newline (never echoed in errors)."""
    try:
        data = Path(raw).read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as error:
        raise SettingsError(f"{name} names a file that cannot be read: {raw!r} ({error.strerror})") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SettingsError(f"{name} names a file over {MAX_SECRET_BYTES} bytes: {raw!r}")
    try:
        return data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise SettingsError(f"{name} names a file that is not UTF-8 text: {raw!r}") from None


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret given directly in `name` or in the file named by `name`_FILE, not both."""
    direct, path = env.get(name) or None, env.get(f"{name}_FILE") or None
    if direct is not None and path is not None:
        raise SettingsError(f"set {name} or {name}_FILE, not both")
    value = direct if path is None else _secret_file(f"{name}_FILE", path)
    if value is not None and (not value or len(value.encode()) > MAX_SECRET_BYTES):
        raise SettingsError(f"{name if path is None else name + '_FILE'} must hold 1..{MAX_SECRET_BYTES} bytes")
    return value


def _readable_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    path = Path(raw)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise SettingsError(f"{name} must name a readable file, got {raw!r}")
    return path


def _kafka_security(env: Mapping[str, str]) -> dict[str, Any]:
    """MLRISK_KAFKA_SECURITY_PROTOCOL and the SASL and TLS settings it needs, checked together."""
    protocol = _choice(env, "MLRISK_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", KAFKA_SECURITY_PROTOCOLS)
    uses_sasl, uses_tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
    sasl = {
        "MLRISK_KAFKA_SASL_MECHANISM": _choice(env, "MLRISK_KAFKA_SASL_MECHANISM", "", KAFKA_SASL_MECHANISMS) or None,
        "MLRISK_KAFKA_SASL_USERNAME": env.get("MLRISK_KAFKA_SASL_USERNAME") or None,
        "MLRISK_KAFKA_SASL_PASSWORD": _secret(env, "MLRISK_KAFKA_SASL_PASSWORD"),
    }
    username = sasl["MLRISK_KAFKA_SASL_USERNAME"]
    if username is not None and (len(username) > 255 or not username.isprintable()):
        raise SettingsError(f"MLRISK_KAFKA_SASL_USERNAME must be 1..255 printable characters, got {username!r}")
    for name, value in sasl.items():
        if uses_sasl and value is None:
            raise SettingsError(f"{name} must be set when MLRISK_KAFKA_SECURITY_PROTOCOL is {protocol}")
        if not uses_sasl and value is not None:
            raise SettingsError(f"{name} is set, but MLRISK_KAFKA_SECURITY_PROTOCOL {protocol} uses no SASL")
    files = {
        name: _readable_file(env, name)
        for name in ("MLRISK_KAFKA_SSL_CAFILE", "MLRISK_KAFKA_SSL_CERTFILE", "MLRISK_KAFKA_SSL_KEYFILE")
    }
    for name, path in files.items():
        if path is not None and not uses_tls:
            raise SettingsError(f"{name} is set, but MLRISK_KAFKA_SECURITY_PROTOCOL {protocol} uses no TLS")
    cafile, certfile, keyfile = files.values()
    if (certfile is None) != (keyfile is None):
        raise SettingsError("MLRISK_KAFKA_SSL_CERTFILE and MLRISK_KAFKA_SSL_KEYFILE must be set together")
    if uses_tls:
        _check_tls_files(cafile, certfile, keyfile)
    return {
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": sasl["MLRISK_KAFKA_SASL_MECHANISM"],
        "kafka_sasl_username": username,
        "kafka_sasl_password": sasl["MLRISK_KAFKA_SASL_PASSWORD"],
        "kafka_ssl_cafile": cafile,
        "kafka_ssl_certfile": certfile,
        "kafka_ssl_keyfile": keyfile,
    }


def _check_tls_files(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> None:
    """Load the CA and the client certificate once now, so that a wrong file stops start-up, not a connection."""
    import ssl

    context = ssl.create_default_context()
    try:
        if cafile is not None:
            context.load_verify_locations(cafile=str(cafile))
    except ssl.SSLError as error:
        raise SettingsError(f"MLRISK_KAFKA_SSL_CAFILE holds no usable CA certificate ({error.reason})") from None
    try:
        if certfile is not None and keyfile is not None:
            context.load_cert_chain(str(certfile), str(keyfile))
    except ssl.SSLError as error:
        raise SettingsError(
            f"MLRISK_KAFKA_SSL_CERTFILE and MLRISK_KAFKA_SSL_KEYFILE are not a certificate and its key ({error.reason})"
        ) from None


def _api_tokens(env: Mapping[str, str]) -> tuple[str, ...]:
    """MLRISK_API_TOKENS (comma-separated) or MLRISK_API_TOKENS_FILE (one a line, # comments); never echoed."""
    direct, path = env.get("MLRISK_API_TOKENS") or None, env.get("MLRISK_API_TOKENS_FILE") or None
    if direct is not None and path is not None:
        raise SettingsError("set MLRISK_API_TOKENS or MLRISK_API_TOKENS_FILE, not both")
    if path is not None:
        name = "MLRISK_API_TOKENS_FILE"
        lines = _secret_file(name, path).splitlines()
        tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not tokens:
            raise SettingsError(f"{name} names a file without tokens: {path!r}")
    elif direct is not None:
        name = "MLRISK_API_TOKENS"
        tokens = [token.strip() for token in direct.split(",") if token.strip()]
    else:
        return ()
    if len(tokens) > MAX_API_TOKENS:
        raise SettingsError(f"{name} holds {len(tokens)} tokens, at most {MAX_API_TOKENS}")
    for i, token in enumerate(tokens, 1):
        if not MIN_API_TOKEN_CHARS <= len(token) <= 512 or not all("!" <= c <= "~" and c != "," for c in token):
            raise SettingsError(
                f"{name}: token {i} must be {MIN_API_TOKEN_CHARS}..512 printable ASCII characters "
                "without spaces or commas"
            )
    return tuple(tokens)


def _web_access(env: Mapping[str, str]) -> dict[str, Any]:
    """Where the HTTP server listens and who may ask it: a non-loopback address needs tokens or an explicit
    MLRISK_ALLOW_ANONYMOUS=true."""
    bind = env.get("MLRISK_WEB_BIND") or "127.0.0.1"
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:
        raise SettingsError(
            f"MLRISK_WEB_BIND must be an IP address such as 127.0.0.1 or 0.0.0.0, got {bind!r}"
        ) from None
    tokens = _api_tokens(env)
    allow_anonymous = _flag(env, "MLRISK_ALLOW_ANONYMOUS", False)
    metrics_require_token = _flag(env, "MLRISK_METRICS_REQUIRE_TOKEN", False)
    if metrics_require_token and not tokens:
        raise SettingsError("MLRISK_METRICS_REQUIRE_TOKEN is true but no MLRISK_API_TOKENS or MLRISK_API_TOKENS_FILE")
    if not address.is_loopback and not tokens and not allow_anonymous:
        raise SettingsError(
            f"MLRISK_WEB_BIND {bind} is reachable from other machines: set MLRISK_API_TOKENS (or "
            "MLRISK_API_TOKENS_FILE), or MLRISK_ALLOW_ANONYMOUS=true to serve without authentication on purpose"
        )
    return {
        "web_bind": bind,
        "api_tokens": tokens,
        "metrics_require_token": metrics_require_token,
        "allow_anonymous": allow_anonymous,
    }
