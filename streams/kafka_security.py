"""How every Kafka client of the project connects: the brokers and the security settings, in one place.

aiokafka clients (ingest's consumer and producer, the admin client, replay, the demo's subscriber, the bench) are
built with `client_options(settings)`; the Faust app gets the same settings as `faust_credentials(settings)`.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed
from aiokafka.helpers import create_ssl_context
from faust.auth import Credentials, SASLCredentials, SSLCredentials

from streams.config import Settings

# A producer's record batch per partition, in bytes. The client sends one request at a time to a broker, carrying
# at most one batch per partition: at the client's 16 KiB default, every 29 KB engine state of a minute-boundary
# burst went in a request of its own (about 140 requests, one after another, for 200 symbols' states and
# signals); at 256 KiB they take about 9. It stays well under the broker's default `message.max.bytes` (1 MiB).
PRODUCER_BATCH_BYTES = 262_144


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS that verifies the broker (the given CA, else the system's) and its host name; with a client certificate
    for mutual TLS when one is set."""
    return create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers, "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def faust_credentials(settings: Settings) -> Credentials | None:
    """The same settings as Faust's `broker_credentials` (None: PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "SSL":
        return SSLCredentials(ssl_context(settings))
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
            mechanism=settings.kafka_sasl_mechanism,
        )
    return None


async def connection_failure(settings: Settings, error: BaseException) -> str:
    """Why the brokers refused us, in words: aiokafka's clients only say they could not bootstrap, so each
    broker is tried once more directly and its own error named (authentication, TLS, nothing listening)."""
    options = {k: v for k, v in client_options(settings).items() if k != "bootstrap_servers"}
    user = (
        f" as {settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism})"
        if settings.kafka_sasl_username
        else ""
    )
    reasons = []
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.rpartition(":")
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=10_000, **options)
        except SaslAuthenticationFailed:
            reasons.append(f"{server}: authentication failed: wrong user name or password")
        except ssl.SSLCertVerificationError as failure:
            reasons.append(
                f"{server}: TLS: the broker's certificate is not trusted ({failure.verify_message}); "
                "see MLRISK_KAFKA_SSL_CAFILE"
            )
        except (TimeoutError, OSError, KafkaError) as failure:
            reasons.append(f"{server}: {type(failure).__name__}: {failure}")
        else:
            conn.close()
    detail = "; ".join(reasons) if reasons else f"{type(error).__name__}: {error}"
    return f"cannot use Kafka over {settings.kafka_security_protocol}{user}: {detail}"
