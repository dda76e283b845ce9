"""bench/instance_layout.py's pure parts: pooling rounds, nearest-rank percentiles, the report."""

from __future__ import annotations

from typing import Any

from bench.studies.instance_layout import LAYOUTS, markdown, percentile, pooled


def ghz(ok_latencies_s: list[float], seconds: float, rejected: int = 0) -> dict[str, Any]:
    details = [{"latency": round(s * 1e9), "status": "OK"} for s in ok_latencies_s]
    details += [{"latency": 1_000_000, "status": "ResourceExhausted"}] * rejected
    codes = {"OK": len(ok_latencies_s)} | ({"ResourceExhausted": rejected} if rejected else {})
    return {"total": round(seconds * 1e9), "statusCodeDistribution": codes, "details": details}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 50) == 10.0
    assert percentile(values, 95) == 19.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 95) == 0.0


def test_rounds_are_pooled_over_summed_time_and_ok_latencies_only() -> None:
    cell = pooled([ghz([1.0, 2.0], 4.0, rejected=3), ghz([3.0, 4.0, 5.0, 6.0], 6.0)])
    assert cell["ok"] == 6 and cell["ok_per_s"] == 0.6
    assert cell["status_codes"] == {"OK": 6, "ResourceExhausted": 3}
    assert cell["p50_s"] == 3.0 and cell["p95_s"] == 6.0  # rejections are not latency samples
    assert cell["per_round_ok_per_s"] == [0.5, 4 / 6]


def test_report_puts_layouts_side_by_side_with_ratios() -> None:
    cells = {
        f"{layout.key}@c4": pooled([ghz([2.0] * 10, 10.0 if layout.key == "2x1" else 11.0)])
        for layout in LAYOUTS
    }
    result = {
        "cells": cells,
        "ratios": {"c4": {"ok_per_s": 1.1, "ok_per_s_paired_median": 1.05, "p95": 1.0}},
        "meta": {
            "date": "2026-11-25 10:00 UTC",
            "ocrmesh": "0.1.0",
            "python": "3.11",
            "cpus": 2,
            "machine": "x86_64",
            "image": "photo.jpg",
            "duration_s": 20.0,
            "rounds": 1,
            "concurrencies": [4],
        },
    }
    text = markdown(result)
    assert "| 4 | 2 instances x 1 worker | 1.00 |" in text
    assert "| 4 | 1 instance x 2 workers | 0.91 |" in text
    assert "**1.100x**" in text and "median of rounds 1.050x" in text
    assert "largest gap 5.0%" in text and "near-equal" in text
