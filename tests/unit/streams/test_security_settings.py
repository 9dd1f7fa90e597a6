"""Kafka security, HTTP access and secrets: each setting checked at start-up, secrets kept out of reprs and errors."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from streams.config import Settings, SettingsError
from streams.kafka_security import client_options, faust_credentials

SASL = {
    "MLRISK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "MLRISK_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "MLRISK_KAFKA_SASL_USERNAME": "worker",
    "MLRISK_KAFKA_SASL_PASSWORD": "s3cret-kafka-password",
}
TOKEN = "tok-0123456789abcdef-secret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate and its key, and a file that is neither."""
    folder = tmp_path_factory.mktemp("pki")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    (folder / "junk.pem").write_text("not a certificate\n")
    return folder


def bad_settings(pki: Path) -> list[tuple[str, dict[str, str]]]:
    """(the setting the error must name, the environment)."""
    return [
        ("MLRISK_KAFKA_SECURITY_PROTOCOL", {"MLRISK_KAFKA_SECURITY_PROTOCOL": "TLS"}),
        ("MLRISK_KAFKA_SASL_MECHANISM", {**SASL, "MLRISK_KAFKA_SASL_MECHANISM": "GSSAPI"}),
        ("MLRISK_KAFKA_SASL_MECHANISM", {**SASL, "MLRISK_KAFKA_SASL_MECHANISM": ""}),
        ("MLRISK_KAFKA_SASL_USERNAME", {**SASL, "MLRISK_KAFKA_SASL_USERNAME": ""}),
        ("MLRISK_KAFKA_SASL_USERNAME", {**SASL, "MLRISK_KAFKA_SASL_USERNAME": "a\nb"}),
        ("MLRISK_KAFKA_SASL_PASSWORD", {**SASL, "MLRISK_KAFKA_SASL_PASSWORD": ""}),
        ("MLRISK_KAFKA_SASL_PASSWORD", {**SASL, "MLRISK_KAFKA_SASL_PASSWORD_FILE": str(pki / "junk.pem")}),
        (
            "MLRISK_KAFKA_SASL_PASSWORD_FILE",
            {**SASL, "MLRISK_KAFKA_SASL_PASSWORD": "", "MLRISK_KAFKA_SASL_PASSWORD_FILE": str(pki / "missing")},
        ),
        ("MLRISK_KAFKA_SASL_USERNAME", {"MLRISK_KAFKA_SASL_USERNAME": "worker"}),  # PLAINTEXT uses no SASL
        ("MLRISK_KAFKA_SSL_CAFILE", {**SASL, "MLRISK_KAFKA_SSL_CAFILE": str(pki / "missing.pem")}),
        ("MLRISK_KAFKA_SSL_CAFILE", {**SASL, "MLRISK_KAFKA_SSL_CAFILE": str(pki / "junk.pem")}),
        (
            "MLRISK_KAFKA_SSL_CAFILE",
            {
                "MLRISK_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                **{k: v for k, v in SASL.items() if k != "MLRISK_KAFKA_SECURITY_PROTOCOL"},
                "MLRISK_KAFKA_SSL_CAFILE": str(pki / "cert.pem"),
            },
        ),
        (
            "MLRISK_KAFKA_SSL_KEYFILE",
            {"MLRISK_KAFKA_SECURITY_PROTOCOL": "SSL", "MLRISK_KAFKA_SSL_CERTFILE": str(pki / "cert.pem")},
        ),
        (
            "MLRISK_KAFKA_SSL_CERTFILE",
            {
                "MLRISK_KAFKA_SECURITY_PROTOCOL": "SSL",
                "MLRISK_KAFKA_SSL_CERTFILE": str(pki / "junk.pem"),
                "MLRISK_KAFKA_SSL_KEYFILE": str(pki / "key.pem"),
            },
        ),
        ("MLRISK_KAFKA_REPLICATION_FACTOR", {"MLRISK_KAFKA_REPLICATION_FACTOR": "0"}),
        ("MLRISK_KAFKA_REPLICATION_FACTOR", {"MLRISK_KAFKA_REPLICATION_FACTOR": "three"}),
        ("MLRISK_CREATE_TOPICS", {"MLRISK_CREATE_TOPICS": "sometimes"}),
        ("MLRISK_WEB_BIND", {"MLRISK_WEB_BIND": "example.com"}),
        ("MLRISK_WEB_BIND", {"MLRISK_WEB_BIND": "0.0.0.0"}),  # reachable from outside, no tokens
        ("MLRISK_WEB_BIND", {"MLRISK_WEB_BIND": "::", "MLRISK_ALLOW_ANONYMOUS": "false"}),
        ("MLRISK_ALLOW_ANONYMOUS", {"MLRISK_ALLOW_ANONYMOUS": "perhaps"}),
        ("MLRISK_API_TOKENS", {"MLRISK_API_TOKENS": "short"}),
        ("MLRISK_API_TOKENS", {"MLRISK_API_TOKENS": "has a space in the middle of it"}),
        ("MLRISK_API_TOKENS", {"MLRISK_API_TOKENS": TOKEN, "MLRISK_API_TOKENS_FILE": str(pki / "junk.pem")}),
        ("MLRISK_API_TOKENS_FILE", {"MLRISK_API_TOKENS_FILE": str(pki / "missing")}),
        ("MLRISK_METRICS_REQUIRE_TOKEN", {"MLRISK_METRICS_REQUIRE_TOKEN": "true"}),
        ("MLRISK_METRICS_REQUIRE_TOKEN", {"MLRISK_METRICS_REQUIRE_TOKEN": "2", "MLRISK_API_TOKENS": TOKEN}),
    ]


def test_each_bad_setting_is_named(pki: Path) -> None:
    for name, env in bad_settings(pki):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env(env)
        assert name in str(caught.value), (env, str(caught.value))


def test_errors_never_echo_a_secret(pki: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"MLRISK_API_TOKENS": f"{TOKEN},short-secret"})
    assert "short-secret" not in str(caught.value) and "token 2" in str(caught.value)
    (pki / "tokens").write_text(f"# one a line\n{TOKEN}\nshort-secret\n")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"MLRISK_API_TOKENS_FILE": str(pki / "tokens")})
    assert "short-secret" not in str(caught.value) and "token 2" in str(caught.value)


def test_reprs_hold_no_secrets(pki: Path) -> None:
    (pki / "password").write_text("file-kafka-password\n")
    settings = Settings.from_env(
        {
            **SASL,
            "MLRISK_KAFKA_SASL_PASSWORD": "",
            "MLRISK_KAFKA_SASL_PASSWORD_FILE": str(pki / "password"),
            "MLRISK_API_TOKENS": f"{TOKEN},second-token-0123456789",
            "DATABASE_URL": "postgresql://mlrisk:db-password-x@db.example:5432/mlrisk?sslmode=verify-full",
        }
    )
    assert settings.kafka_sasl_password == "file-kafka-password"  # the file's final newline is not part of it
    assert settings.api_tokens == (TOKEN, "second-token-0123456789")
    assert settings.database_url == "postgresql://mlrisk:db-password-x@db.example:5432/mlrisk?sslmode=verify-full"
    text = repr(settings) + repr(faust_credentials(settings))
    for secret in ("file-kafka-password", TOKEN, "second-token", "db-password-x"):
        assert secret not in text
    assert "worker" in text  # the user name is not a secret and helps when reading logs


def test_defaults_are_safe() -> None:
    settings = Settings.from_env({})
    assert settings.web_bind == "127.0.0.1"
    assert settings.kafka_security_protocol == "PLAINTEXT" and settings.api_tokens == ()
    assert (settings.kafka_replication_factor, settings.create_topics) == (1, True)
    assert client_options(settings) == {"bootstrap_servers": "localhost:9092", "security_protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None


def test_anonymous_public_bind_only_on_purpose() -> None:
    settings = Settings.from_env({"MLRISK_WEB_BIND": "0.0.0.0", "MLRISK_ALLOW_ANONYMOUS": "true"})
    assert settings.web_bind == "0.0.0.0" and settings.api_tokens == ()
    settings = Settings.from_env({"MLRISK_WEB_BIND": "0.0.0.0", "MLRISK_API_TOKENS": TOKEN})
    assert settings.api_tokens == (TOKEN,)


def test_sasl_ssl_client_options_verify_the_broker(pki: Path) -> None:
    settings = Settings.from_env(
        {
            **SASL,
            "MLRISK_KAFKA_SSL_CAFILE": str(pki / "cert.pem"),
            "MLRISK_KAFKA_SSL_CERTFILE": str(pki / "cert.pem"),
            "MLRISK_KAFKA_SSL_KEYFILE": str(pki / "key.pem"),
        }
    )
    options = client_options(settings)
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "s3cret-kafka-password",
    }
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test"),),)]
    credentials = faust_credentials(settings)
    assert credentials is not None
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")  # type: ignore[attr-defined]


def test_ssl_without_sasl_gives_faust_tls_credentials(pki: Path) -> None:
    settings = Settings.from_env(
        {"MLRISK_KAFKA_SECURITY_PROTOCOL": "SSL", "MLRISK_KAFKA_SSL_CAFILE": str(pki / "cert.pem")}
    )
    credentials = faust_credentials(settings)
    assert credentials is not None and credentials.protocol.value == "SSL"  # type: ignore[attr-defined]
    assert client_options(settings)["security_protocol"] == "SSL"
