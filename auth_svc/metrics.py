"""Prometheus metrics of one auth instance: calls per method and code, outcomes per use case, bcrypt
load, throttle size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ocrmesh.auth.v1 import auth_pb2
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh.metrics_endpoint import MetricsEndpoint

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
METHODS = tuple(m.name for m in auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods)


class _LiveCollector(Collector):
    """Reads (bcrypt pending, throttled keys, published keys) at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        pending, throttled, keys = self._read()
        yield GaugeMetricFamily(
            "ocrmesh_auth_password_checks_pending",
            "bcrypt hashes and checks running or waiting for a thread now",
            pending,
        )
        yield GaugeMetricFamily(
            "ocrmesh_auth_throttle_keys",
            "User names and client addresses with recent failed logins that the login throttle tracks",
            throttled,
        )
        yield GaugeMetricFamily(
            "ocrmesh_auth_jwks_keys", "Public signing keys this instance publishes in its JWKS", keys
        )


class AuthMetrics(MetricsEndpoint):
    """The metrics on its private registry, served on /metrics by `MetricsEndpoint`."""

    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        super().__init__()
        self.requests = Counter(
            "ocrmesh_auth_requests",
            "Finished AuthService calls by method and gRPC status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "ocrmesh_auth_outcomes",
            "Finished auth use cases (register, login, refresh, logout) by outcome: ok, invalid, taken,"
            " bad_credentials, throttled, busy, or the refresh token's rejection reason",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.password_seconds = Histogram(
            "ocrmesh_auth_password_seconds",
            "Seconds for one bcrypt hash (register) or check (login), waiting for a thread included",
            buckets=BUCKETS,
            registry=self.registry,
        )
        # Every method's OK series exists from the start (at 0), so rates work before the first call.
        for method in METHODS:
            self.requests.labels(method, "OK")
        self.registry.register(_LiveCollector(read))

    def count_request(self, method: str, code: str) -> None:
        """One finished call (`mesh.interceptors.RequestCountInterceptor` calls this)."""
        self.requests.labels(method, code).inc()

    def outcome(self, action: str, outcome: str) -> None:
        self.outcomes.labels(action, outcome).inc()
