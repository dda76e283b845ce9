"""Prometheus metrics of one OCR instance: stage latencies, queue depth, in-flight, rejects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ocr_svc.workers import Counters

STAGES = ("queue", "decode", "det", "cls", "rec", "total")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class _LiveCollector(Collector):
    """Reads gauges and totals from the running pool at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int, Counters]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        queued, busy, counters = self._read()
        yield GaugeMetricFamily("ocrmesh_ocr_queue_depth", "Requests waiting for a worker", queued)
        yield GaugeMetricFamily("ocrmesh_ocr_in_flight", "Requests running on workers", busy)
        for name, value in dataclasses.asdict(counters).items():
            yield CounterMetricFamily(f"ocrmesh_ocr_{name}", f"Total {name.replace('_', ' ')}", value)


class OcrMetrics:
    """Owns a private registry (no globals), so several instances can live in one process."""

    def __init__(self, read: Callable[[], tuple[int, int, Counters]]) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "ocrmesh_ocr_stage_seconds",
            "Time per request spent in each stage",
            ["stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "ocrmesh_ocr_requests",
            "Finished OCR requests by gRPC status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(read))
        self._server: Any = None
        self.port = 0

    def observe(self, timing_ms: dict[str, float]) -> None:
        for stage in STAGES:
            value = timing_ms.get(stage)
            if value is not None:
                self.stage_seconds.labels(stage).observe(value / 1000)

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
