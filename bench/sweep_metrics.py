"""Server-side figures for a sweep cell: OCR instances' Prometheus counters before and after."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

PREFIX = "ocrmesh_ocr_"
# widened, model_runs, wide_model_runs: how much of a cell's work ran on the wide (lone-request)
# ONNX sessions, which changes the service time by a third on a 2-core machine
COUNTERS = (
    "accepted", "completed", "rejected_busy", "dropped_expired", "dropped_cancelled", "failed",
    "widened", "model_runs", "wide_model_runs", "worker_recycles", "worker_restarts",
)  # fmt: skip
Samples = dict[str, float]


def parse_samples(text: str) -> Samples:
    """Prometheus text as {"name{label=value,...}": value} (parsed by prometheus_client)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return samples


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return str(reply.read().decode("utf-8", "replace"))


async def scrape(url: str, timeout: float = 5.0) -> Samples | None:
    """One instance's /metrics, or None when it cannot be read (the cell records that, not fails)."""
    if not url:
        return None
    try:
        return parse_samples(await asyncio.to_thread(_fetch, url, timeout))
    except (OSError, urllib.error.URLError, ValueError):
        return None


async def scrape_all(urls: Mapping[str, str]) -> dict[str, Samples | None]:
    found = await asyncio.gather(*(scrape(url) for url in urls.values()))
    return dict(zip(urls, found, strict=True))


def _get(samples: Samples, name: str, **labels: str) -> float:
    key = f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}"
    return samples.get(key, 0.0)


def instance_delta(before: Samples, after: Samples) -> dict[str, float]:
    """What one instance did between two scrapes: counters, and mean queue / compute ms per request.

    Compute is the mean total stage time minus the mean queue wait (decode + det + cls + rec).
    """
    out = {
        name: _get(after, f"{PREFIX}{name}_total") - _get(before, f"{PREFIX}{name}_total")
        for name in COUNTERS
    }
    means: dict[str, float] = {}
    for stage in ("queue", "total"):
        count = _get(after, f"{PREFIX}stage_seconds_count", stage=stage) - _get(
            before, f"{PREFIX}stage_seconds_count", stage=stage
        )
        total = _get(after, f"{PREFIX}stage_seconds_sum", stage=stage) - _get(
            before, f"{PREFIX}stage_seconds_sum", stage=stage
        )
        means[stage] = 1000.0 * total / count if count > 0 else 0.0
    out["queue_ms"] = means["queue"]
    out["compute_ms"] = max(0.0, means["total"] - means["queue"])
    return out


def server_summary(
    before: Mapping[str, Samples | None], after: Mapping[str, Samples | None]
) -> dict[str, Any]:
    """Per-instance deltas with each one's share of completed requests, plus totals.

    Instances whose metrics could not be read are listed under "unreadable".
    """
    instances: dict[str, dict[str, float]] = {}
    unreadable: list[str] = []
    for name in sorted(set(before) | set(after)):
        first, last = before.get(name), after.get(name)
        if first is None or last is None:
            unreadable.append(name)
            continue
        instances[name] = instance_delta(first, last)
    completed = sum(d["completed"] for d in instances.values())
    for delta in instances.values():
        delta["share"] = delta["completed"] / completed if completed else 0.0
    totals = {name: sum(d[name] for d in instances.values()) for name in COUNTERS}
    weights = [(d["completed"], d) for d in instances.values() if d["completed"] > 0]
    weight = sum(w for w, _ in weights)
    for field in ("queue_ms", "compute_ms"):
        totals[field] = sum(w * d[field] for w, d in weights) / weight if weight else 0.0
    return {"instances": instances, "totals": totals, "unreadable": unreadable}
