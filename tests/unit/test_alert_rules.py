"""The Prometheus alert rules: each one has a promtool unit test that sees it both quiet and firing, and they pass."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from streams.config import REPO_ROOT

PROMETHEUS = REPO_ROOT / "ops" / "prometheus"


def _alerts() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_test_that_sees_it_quiet_and_firing() -> None:
    checked: dict[str, set[bool]] = {}
    for path in sorted((PROMETHEUS / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                checked.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names)), "two alerts share a name"
    assert {name: checked.get(name, set()) for name in names} == {name: {False, True} for name in names}


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in _alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_promtool_checks_the_config_and_rules_and_runs_the_rule_tests() -> None:
    if shutil.which("promtool") is None:
        raise AssertionError("promtool is missing: `make setup` installs it as root, see ops/prometheus/prometheus.sh")
    result = subprocess.run([str(PROMETHEUS / "prometheus.sh"), "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") >= 2 + len(list((PROMETHEUS / "tests").glob("*.yml")))
