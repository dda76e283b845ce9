"""Prometheus metrics of one OCR instance: calls per method and code, stage latencies, queue depth,
in-flight, and the pool's totals (accepted, refused by reason, dropped, worker restarts)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from ocrmesh.ocr.v1 import ocr_pb2
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh.metrics_endpoint import MetricsEndpoint
from ocr_svc.job import Timing
from ocr_svc.workers import Counters

STAGES = ("queue", "decode", "det", "cls", "rec", "total")
SERVICE = ocr_pb2.DESCRIPTOR.services_by_name["OcrService"]
METHODS = tuple(m.name for m in SERVICE.methods)

# HELP text of each `ocrmesh_ocr_<name>_total` counter read from the pool's `Counters`.
COUNTER_HELP = {
    "accepted": "OCR jobs admitted to the queue (RecognizeBatch items count one each)",
    "completed": "OCR jobs a worker finished with a result",
    "rejected_busy": "Jobs refused at admission with RESOURCE_EXHAUSTED, whatever the reason (sum of the"
    " rejected_deadline_unreachable, _queue_wait, _queue_memory and _queue_full counters)",
    "rejected_deadline_unreachable": "Jobs refused because the predicted wait plus one job did not fit the"
    " caller's deadline (reason DEADLINE_UNREACHABLE)",
    "rejected_queue_wait": "Jobs refused because the predicted wait was over --max-queue-wait-s"
    " (reason QUEUE_WAIT_TOO_LONG)",
    "rejected_queue_memory": "Jobs refused because the waiting images held all the bytes or pixels the"
    " queue may hold (reason QUEUE_MEMORY_FULL)",
    "rejected_queue_full": "Jobs refused because the --queue-depth cap was reached (reason QUEUE_FULL)",
    "refusals_held": "Refusals answered only after a pacing hold (clients retrying at once were slowed)",
    "admitted_after_hold": "Held calls that found room when their pacing hold ended and were admitted",
    "rejected_invalid": "Images refused with INVALID_ARGUMENT (empty, not an image, too big, corrupt...)",
    "dropped_expired": "Queued jobs dropped because their deadline passed before a worker was free",
    "dropped_cancelled": "Queued jobs dropped because their caller cancelled",
    "worker_restarts": "Worker processes replaced after a crash, a kill or a stuck job",
    "worker_recycles": "Worker processes replaced on purpose (--recycle-after-jobs or --max-worker-rss-mb)",
    "retried": "Jobs retried on another worker after the worker running them died",
    "widened": "Jobs with at least one model run on the wide ONNX Runtime sessions: they ran alone on"
    " the machine (--lone-request-threads)",
    "model_runs": "ONNX Runtime model runs of completed jobs (detector, classifier and recogniser batches)",
    "wide_model_runs": "Model runs on the wide sessions (--lone-request-threads): the share of model_runs"
    " that ran alone on the machine",
    "failed": "Jobs that ended in an error other than a refusal (a worker died twice, an engine error)",
}


def counter_help(name: str) -> str:
    """The HELP text of the pool counter `name` (a generic one for a counter added later)."""
    return COUNTER_HELP.get(name, f"OCR jobs: {name.replace('_', ' ')}")


BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class _LiveCollector(Collector):
    """Reads gauges and totals from the running pool at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int, Counters]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        queued, busy, counters = self._read()
        yield GaugeMetricFamily(
            "ocrmesh_ocr_queue_depth", "OCR jobs admitted and waiting for a free worker now", queued
        )
        yield GaugeMetricFamily("ocrmesh_ocr_in_flight", "OCR jobs running on a worker process now", busy)
        for name, value in dataclasses.asdict(counters).items():
            yield CounterMetricFamily(f"ocrmesh_ocr_{name}", counter_help(name), value)


class OcrMetrics(MetricsEndpoint):
    """The metrics on its private registry, served on /metrics by `MetricsEndpoint`."""

    def __init__(self, read: Callable[[], tuple[int, int, Counters]]) -> None:
        super().__init__()
        self.stage_seconds = Histogram(
            "ocrmesh_ocr_stage_seconds",
            "Seconds one OCR job spent in each stage: queue (waiting for a worker), decode, det"
            " (text detection), cls (direction classifier), rec (recognition), total (arrival to answer)",
            ["stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "ocrmesh_ocr_requests",
            "Finished OcrService calls by method and gRPC status code (OK, INVALID_ARGUMENT,"
            " RESOURCE_EXHAUSTED, UNAUTHENTICATED...); a RecognizeBatch stream counts once",
            ["method", "code"],
            registry=self.registry,
        )
        # Every series exists from the start (at 0), so rates work before the first call of a kind.
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for method in METHODS:
            self.requests.labels(method, "OK")
        self.registry.register(_LiveCollector(read))

    def count_request(self, method: str, code: str) -> None:
        """One finished call (`mesh.interceptors.RequestCountInterceptor` calls this)."""
        self.requests.labels(method, code).inc()

    def observe(self, timing: Timing) -> None:
        by_stage = timing.by_stage()
        for stage in STAGES:
            self.stage_seconds.labels(stage).observe(by_stage[stage] / 1000)
