"""docker-compose.yml for users: the services, ports, volumes and environment the README promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from streams.config import REPO_ROOT


def _compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_service_with_its_ports() -> None:
    services = _compose()["services"]
    assert {
        "kafka",
        "timescaledb",
        "prometheus",
        "grafana",
        "worker",
        "replay",
        "train",
        "db-init",
        "retrainer",
    } <= set(services)
    published = [p for svc in services.values() for p in svc.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published  # never every interface
    ports = {name: [p.split(":")[-2] for p in svc.get("ports", [])] for name, svc in services.items()}
    assert ports["kafka"] == ["9092"] and ports["timescaledb"] == ["5432"] and ports["worker"] == ["6066"]
    assert ports["prometheus"] == ["9090"] and ports["grafana"] == ["3000"]
    assert (
        "KRaft" in (REPO_ROOT / "docker-compose.yml").read_text()
        or services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    )


def test_worker_environment_points_at_the_compose_services() -> None:
    services = _compose()["services"]
    env = services["worker"]["environment"]
    assert env["MLRISK_KAFKA_BROKERS"] == "kafka://kafka:29092"
    assert "@timescaledb:5432/" in env["DATABASE_URL"]
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].startswith("INTERNAL://kafka:29092")
    assert services["worker"]["depends_on"]["db-init"]["condition"] == "service_completed_successfully"


def test_every_mounted_file_exists_and_named_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), (name, source)
            elif not source.startswith(("$", "/", "..")):
                assert source in declared, (name, source)
    prometheus = yaml.safe_load((REPO_ROOT / "ops/prometheus/prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["worker:6066"]
    for rule_file in prometheus["rule_files"]:
        local = REPO_ROOT / "ops/prometheus" / rule_file.rsplit("/", 1)[-1]
        assert yaml.safe_load(local.read_text())["groups"]


def test_images_are_pinned_and_the_dockerfile_builds_the_cli() -> None:
    for name, service in _compose()["services"].items():
        if "image" in service:
            assert re.search(r":[\w.\-]+$", service["image"]), name
        else:
            assert service["build"] == "."
    assert 'ENTRYPOINT ["mlrisk"]' in (REPO_ROOT / "Dockerfile").read_text()


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


SECRETS = (
    "POSTGRES_PASSWORD",
    "KAFKA_ADMIN_PASSWORD",
    "KAFKA_MLRISK_PASSWORD",
    "MLRISK_API_TOKENS",
    "GRAFANA_ADMIN_PASSWORD",
)


@pytest.mark.skipif(_compose_client() is None, reason="no docker compose client on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    client = _compose_client()
    assert client is not None
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        **{name: f"test-{name.lower()}-0123456789" for name in SECRETS},
    }
    result = subprocess.run([*client, "config", "--quiet"], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    # without a secret it refuses to start, naming the variable
    for missing in SECRETS:
        partial = {k: v for k, v in env.items() if k != missing}
        result = subprocess.run(
            [*client, "config", "--quiet"], cwd=REPO_ROOT, capture_output=True, text=True, env=partial
        )
        assert result.returncode != 0 and missing in result.stderr, (missing, result.stderr)


def test_no_default_passwords_no_anonymous_grafana_and_a_non_root_image() -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        assert f"${{{name}:-" not in text and f"${{{name}:?" in text, name
    services = _compose()["services"]
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert services["worker"]["environment"]["MLRISK_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_")
    users = re.findall(r"^USER\s+(\S+)", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def test_dashboard_queries_name_metrics_the_worker_exports() -> None:
    import json

    from streams import metrics

    exported = {m.name for m in metrics.REGISTRY.collect()}
    dashboard = json.loads((REPO_ROOT / "ops/grafana/dashboards/mlrisk.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names.update(re.findall(r"mlrisk_[a-z_]+", target.get("expr", "")))  # SQL panels have rawSql
    base = {re.sub(r"_(bucket|total|count|sum)$", "", n) for n in names}
    assert base <= exported, base - exported
    for wanted in (
        "mlrisk_signals",
        "mlrisk_end_to_end_latency_seconds",
        "mlrisk_consumer_lag_messages",
        "mlrisk_model_weight",
        "mlrisk_risk_score",
        "mlrisk_paper_equity_usdt",
        "mlrisk_drawdown_ratio",
        "mlrisk_events_rejected",
    ):
        assert wanted in base
    alerts = yaml.safe_load((REPO_ROOT / "ops/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    assert {
        "MlriskConsumerLagHigh",
        "MlriskLatencyHigh",
        "MlriskDeadLetterRateHigh",
        "MlriskDrawdownHigh",
        "MlriskTradingHalted",
    } <= {r["alert"] for r in alerts}


def test_compose_runs_the_timescaledb_release_that_set_up_builds() -> None:
    image = _compose()["services"]["timescaledb"]["image"]
    built = re.search(r'^version="([0-9.]+)"$', (REPO_ROOT / "ops" / "timescaledb" / "build.sh").read_text(), re.M)
    assert built is not None and image == f"timescale/timescaledb:{built.group(1)}-pg17"
