"""Prometheus metrics of one auth instance: outcomes per use case, bcrypt load, throttle size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh.metrics_endpoint import MetricsEndpoint

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)


class _LiveCollector(Collector):
    """Reads (bcrypt pending, throttled keys, published keys) at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        pending, throttled, keys = self._read()
        yield GaugeMetricFamily(
            "ocrmesh_auth_password_checks_pending", "bcrypt jobs running or waiting", pending
        )
        yield GaugeMetricFamily(
            "ocrmesh_auth_throttle_keys", "User names and addresses with failed logins", throttled
        )
        yield GaugeMetricFamily("ocrmesh_auth_jwks_keys", "Public keys in the JWKS", keys)


class AuthMetrics(MetricsEndpoint):
    """The metrics on its private registry, served on /metrics by `MetricsEndpoint`."""

    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        super().__init__()
        self.outcomes = Counter(
            "ocrmesh_auth_outcomes",
            "Finished auth use cases by outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.password_seconds = Histogram(
            "ocrmesh_auth_password_seconds",
            "Time for one bcrypt hash or check, waiting included",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(read))

    def outcome(self, action: str, outcome: str) -> None:
        self.outcomes.labels(action, outcome).inc()
