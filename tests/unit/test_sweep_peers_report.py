"""Peer comparison report: rounds pooled, ratios against rapidocr-api, acceptance verdicts, honest notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import CallResult, build_report, go_error
from bench.studies.peers_report import PEER, comparisons, markdown, plot, pooled, verdicts

SECOND = 1_000_000_000


def ghz(ok_s: list[float], total_s: float, rejected: int = 0, other: int = 0) -> dict[str, Any]:
    results = [CallResult(i, round(s * SECOND), "OK", "") for i, s in enumerate(ok_s)]
    results += [CallResult(0, 1000, "ResourceExhausted", go_error("ResourceExhausted", "busy"))] * rejected
    results += [CallResult(0, 1000, "Unavailable", go_error("Unavailable", "reset"))] * other
    return build_report(results, {"call": "x"}, round(total_s * SECOND), "timeout")


def row(target: str, c: int, ok_per_s: float, p95_s: float, rss: float, other: int = 0) -> dict[str, Any]:
    return {
        "target": target,
        "concurrency": c,
        "calls": 10,
        "ok_per_s": ok_per_s,
        "avg_ok_ms": 1000 * p95_s / 2,
        "p50_ok_ms": 1000 * p95_s / 2,
        "p95_ok_ms": 1000 * p95_s,
        "resource_exhausted": 0,
        "other_failures": other,
        "peak_rss_mib": rss,
    }


def test_rounds_pool_time_and_ok_latencies() -> None:
    both = pooled([ghz([1.0] * 10, 10.0, rejected=2), ghz([3.0] * 10, 10.0, other=1)])
    assert (both["calls"], both["ok"], both["rounds"]) == (23, 20, 2)
    assert both["ok_per_s"] == 1.0
    assert both["avg_ok_ms"] == 2000.0
    assert both["p95_ok_ms"] == 3000.0 and both["p50_ok_ms"] == 1000.0
    assert (both["resource_exhausted"], both["other_failures"]) == (2, 1)


def test_ratios_verdicts_and_where_the_peer_is_better(tmp_path: Path) -> None:
    table = [
        row(PEER, 1, 1.6, 0.7, 500),
        row("ocrmesh-grpc", 1, 1.5, 0.8, 900),
        row(PEER, 2, 1.4, 1.6, 700),
        row("ocrmesh-grpc", 2, 2.1, 1.1, 950),
        row(PEER, 64, 1.3, 45.0, 5400),
        row("ocrmesh-grpc", 64, 2.0, 1.9, 1100),
    ]
    found = {(c["target"], c["concurrency"]): c for c in comparisons(table)}
    assert abs(found[("ocrmesh-grpc", 2)]["throughput_ratio"] - 1.5) < 1e-9
    assert found[("ocrmesh-grpc", 64)]["rss_ratio"] < 1 / 3
    checks = {what: ok for what, ok, _ in verdicts(list(found.values()))}
    assert checks == {
        f"ocrmesh-grpc: throughput >= 1.4x {PEER} at every concurrency >= 2": True,
        f"ocrmesh-grpc: lower p95 than {PEER} at every concurrency >= 2": True,
        "ocrmesh-grpc: no failures other than RESOURCE_EXHAUSTED at c64": True,
        f"ocrmesh-grpc: peak RSS at c64 at most 1/3 of {PEER}'s": True,
    }
    slower = [row(PEER, 2, 1.4, 1.6, 700), row("ocrmesh-grpc", 2, 1.5, 1.1, 950, other=3)]
    checks = {what: ok for what, ok, _ in verdicts(comparisons(slower))}
    assert checks[f"ocrmesh-grpc: throughput >= 1.4x {PEER} at every concurrency >= 2"] is False
    assert checks["ocrmesh-grpc: no failures other than RESOURCE_EXHAUSTED at c2"] is False
    text = markdown(table, {"date": "d", "image": "photo.jpg"}, "peers.png")
    assert "- FAIL" not in text and "- PASS: ocrmesh-grpc: peak RSS at c64" in text
    # the peer is faster and lighter at one client: the report says so
    assert "c1, against ocrmesh-grpc: throughput 1.07x of ours, p95 0.88x of ours, RSS 0.56x of ours" in text
    png = plot(table, tmp_path / "peers.png", "t").read_bytes()
    assert png.startswith(b"\x89PNG")
