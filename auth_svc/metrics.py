"""Prometheus metrics of one auth instance: outcomes per use case, bcrypt load, throttle size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class AuthMetrics:
    """Owns a private registry (no globals), so several instances can live in one process."""

    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self.registry = CollectorRegistry()
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
        self._server: Any = None
        self.port = 0

    def outcome(self, action: str, outcome: str) -> None:
        self.outcomes.labels(action, outcome).inc()

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        self.port = int(server.server_address[1])
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
