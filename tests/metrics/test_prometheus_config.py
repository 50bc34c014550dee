"""Bad Prometheus source settings are refused up front, naming the setting and the value."""

import pytest
from vllm_autoscaler.config.schema import PrometheusSource
from vllm_autoscaler.metrics.common import MetricsUnavailable
from vllm_autoscaler.metrics.prometheus import (
    PrometheusMetrics,
    duration_seconds,
    label_matchers,
)


@pytest.mark.parametrize("duration, seconds", [("30s", 30), ("1m", 60), ("1m30s", 90),
                                               ("500ms", 0.5), ("2h", 7200)])
def test_prometheus_durations(duration, seconds):
    assert duration_seconds(duration) == seconds


@pytest.mark.parametrize("window", ["", "60", "1 m", "1min", "m1", "-1m"])
def test_a_bad_rate_window_names_the_setting(window):
    with pytest.raises(ValueError, match=r"metrics\.prometheus\.rate_window"):
        PrometheusMetrics(PrometheusSource(rate_window=window))


def test_selector_values_are_anchored_regexes_in_promql_string_syntax():
    assert label_matchers({"namespace": "serving", "pod": r'vllm-\d+"x'}) == (
        r'namespace=~"serving", pod=~"vllm-\\d+\"x"')


@pytest.mark.parametrize("selector, problem", [
    ({"model-name": "m"}, "is not a label name"),
    ({"pod": "vllm-(["}, "is not a regular expression"),
])
def test_a_bad_selector_names_the_label(selector, problem):
    with pytest.raises(ValueError, match=rf"metrics\.prometheus\.selector.*{problem}"):
        PrometheusMetrics(PrometheusSource(selector=selector))


async def test_tls_verification_is_on_unless_turned_off(kube):
    """An HTTPS endpoint whose certificate no trusted CA signed (the Kubernetes emulator's) is
    refused by default; with verify_tls off the same endpoint is reached (and is no Prometheus)."""

    def source(**tls):
        return PrometheusMetrics(PrometheusSource(url=kube.base_url, timeout_seconds=5, **tls))

    with pytest.raises(MetricsUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await source().collect()
    with pytest.raises(MetricsUnavailable) as reached:
        await source(verify_tls=False).collect()
    assert "CERTIFICATE_VERIFY_FAILED" not in str(reached.value)
