"""`ocrmesh bench bff` arithmetic: per-round summaries, totals and the report's verdict."""

from __future__ import annotations

import json
from pathlib import Path

from bench.studies.bff_bench import combine, markdown, summary

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "bff-2026-11-25.json"


def report(ok: int, failed: int, seconds: float) -> dict[str, object]:
    return {
        "total": int(seconds * 1e9),
        "count": ok + failed,
        "average": 2_000_000_000,
        "statusCodeDistribution": {"OK": ok, "ResourceExhausted": failed} if failed else {"OK": ok},
        "latencyDistribution": [
            {"percentage": 50, "latency": 1_900_000_000},
            {"percentage": 95, "latency": 3e9},
        ],
        "errorDistribution": {},
    }


def test_summary_counts_only_successes_as_throughput() -> None:
    row = summary(report(20, 5, 10.0))
    assert (row["ok"], row["failed"], row["ok_per_s"]) == (20, 5, 2.0)
    assert (row["avg_ms"], row["p50_ms"], row["p95_ms"]) == (2000.0, 1900.0, 3000.0)


def test_totals_weigh_rounds_by_their_time_and_the_report_states_the_verdict() -> None:
    rounds = [
        {"round": 1, "order": ["direct", "bff"], "direct": summary(report(20, 0, 10.0)), "ratio": 0.5},
        {"round": 2, "order": ["bff", "direct"], "direct": summary(report(10, 0, 30.0)), "ratio": 1.0},
    ]
    for r in rounds:
        r["bff"] = r["direct"]
    assert combine(rounds, "direct")["ok_per_s"] == 0.75  # 30 calls in 40 s, not the mean of 2.0 and 0.33
    committed = json.loads(RESULTS.read_text())
    text = markdown(committed)
    assert f"median {committed['ratio_median']}" in text
    assert ("— met" in text) == (committed["ratio_median"] >= 0.9)
