"""Prometheus metrics of one OCR instance: stage latencies, queue depth, in-flight, rejects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh.metrics_endpoint import MetricsEndpoint
from ocr_svc.job import Timing
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


class OcrMetrics(MetricsEndpoint):
    """The metrics on its private registry, served on /metrics by `MetricsEndpoint`."""

    def __init__(self, read: Callable[[], tuple[int, int, Counters]]) -> None:
        super().__init__()
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

    def observe(self, timing: Timing) -> None:
        by_stage = timing.by_stage()
        for stage in STAGES:
            self.stage_seconds.labels(stage).observe(by_stage[stage] / 1000)
