"""The PromQL name reader that checks rules and panels: metrics in, functions, keywords and label names out."""

from __future__ import annotations

from tests.promql import metric_names


def test_names_are_the_selected_metrics_only() -> None:
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(mlrisk_latency_bucket[5m]))) > 0.1") == {
        "mlrisk_latency_bucket"
    }
    assert metric_names(
        'max by (model) (psi and on (instance, model) label_replace(info == 1, "model", "$1", '
        '"version", "(.*)")) > 0.25'
    ) == {"psi", "info"}
    assert metric_names('sum(rate(a_total{reason=~"x|y", symbol="$symbol"}[5m])) / clamp_min(sum(b_total), 1)') == {
        "a_total",
        "b_total",
    }
    assert metric_names("sum by (symbol) (c unless c offset 15m) > 0 or vector(0)") == {"c"}
    assert metric_names("sum(x) by (le) + on() group_left (version) y * 2e3") == {"x", "y"}
    assert metric_names('up{job="mlrisk-worker"} == 0 and time() - z > inf') == {"up", "z"}
