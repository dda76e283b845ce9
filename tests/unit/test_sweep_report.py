"""Sweep report from recorded cells: summaries of ghz reports, server deltas, CSV, markdown, PNG plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from bench.report import CallResult, build_report, ghz_options, go_error
from bench.sweep_metrics import parse_samples, server_summary
from bench.sweep_report import (
    load_records,
    rows,
    summarize,
    wide_share,
    wide_text,
    without_details,
    write_report,
)
from bench.sweep_rounds import base_clients

SECOND = 1_000_000_000


def ghz(
    ok_latencies_s: list[float], rejected: int = 0, other: int = 0, total_s: float = 10.0
) -> dict[str, Any]:
    results = [CallResult(i, round(s * SECOND), "OK", "") for i, s in enumerate(ok_latencies_s)]
    busy = go_error("ResourceExhausted", "queue full")
    results += [CallResult(0, 1_000_000, "ResourceExhausted", busy) for _ in range(rejected)]
    results += [
        CallResult(0, 2 * SECOND, "Unavailable", go_error("Unavailable", "gone")) for _ in range(other)
    ]
    options = ghz_options(
        call="ocrmesh.ocr.v1.OcrService.Recognize",
        host="etcd://x/ocr",
        insecure=True,
        concurrency=4,
        total=0,
        metadata={"authorization": "Bearer secret.token.here"},
    )
    return build_report(results, options, round(total_s * SECOND), "timeout")


METRICS = """# TYPE ocrmesh_ocr_completed_total counter
ocrmesh_ocr_completed_total {completed}
# TYPE ocrmesh_ocr_rejected_busy_total counter
ocrmesh_ocr_rejected_busy_total {rejected}
# TYPE ocrmesh_ocr_worker_recycles_total counter
ocrmesh_ocr_worker_recycles_total {recycles}
# TYPE ocrmesh_ocr_stage_seconds histogram
ocrmesh_ocr_stage_seconds_sum{{stage="queue"}} {queue}
ocrmesh_ocr_stage_seconds_count{{stage="queue"}} {completed}
ocrmesh_ocr_stage_seconds_sum{{stage="total"}} {total}
ocrmesh_ocr_stage_seconds_count{{stage="total"}} {completed}
"""


def samples(
    completed: int, rejected: int, queue_s: float, total_s: float, recycles: int = 0
) -> dict[str, float]:
    counts = {"completed": completed, "rejected": rejected, "recycles": recycles}
    return parse_samples(METRICS.format(queue=queue_s, total=total_s, **counts))


def record(path: str, ocr: int, concurrency: int, report: dict[str, Any]) -> dict[str, Any]:
    key = f"ocr{ocr}-auth1-{path}-c{concurrency}"
    before = {"ocr-1": samples(10, 0, 1.0, 6.0), "ocr-2": samples(0, 0, 0.0, 0.0)}
    after = {"ocr-1": samples(16, 5, 4.0, 12.0, recycles=1), "ocr-2": samples(2, 1, 0.0, 1.0)}
    return {
        "cell": {"key": key, "ocr": ocr, "auth": 1, "path": path, "concurrency": concurrency},
        "settings": "f" * 16,
        "summary": summarize(report),
        "server": server_summary(before, after),
        "rss_mib": {"total_peak": 900.0, "by_process": {"ocr-1": 450.0, "ocr-2": 400.0, "etcd": 30.0}},
        "mix": None,
        "ghz": without_details(report),
    }


def test_summary_separates_ok_latency_from_fast_rejections_and_other_failures() -> None:
    s = summarize(ghz([1.0, 2.0, 3.0, 4.0], rejected=4, other=2, total_s=10.0))
    assert (s["calls"], s["ok"], s["resource_exhausted"], s["other_failures"]) == (10, 4, 4, 2)
    assert s["ok_per_s"] == 0.4
    assert abs(s["avg_ok_ms"] - 2500.0) < 1e-6
    assert s["avg_ms"] < s["avg_ok_ms"]  # ghz's mean counts the 1 ms rejections
    assert s["p95_ok_ms"] == 4000.0
    assert abs(s["failure_rate"] - 0.6) < 1e-9


def test_server_deltas_give_queue_vs_compute_and_each_instance_share() -> None:
    before = {"ocr-1": samples(10, 0, 1.0, 6.0), "ocr-2": samples(0, 0, 0.0, 0.0), "ocr-3": None}
    after = {"ocr-1": samples(16, 5, 4.0, 12.0), "ocr-2": samples(2, 1, 0.0, 1.0), "ocr-3": None}
    found = server_summary(before, after)
    one = found["instances"]["ocr-1"]
    assert (one["completed"], one["rejected_busy"]) == (6.0, 5.0)
    assert abs(one["queue_ms"] - 500.0) < 1e-6 and abs(one["compute_ms"] - 500.0) < 1e-6
    assert abs(one["share"] - 0.75) < 1e-9 and abs(found["instances"]["ocr-2"]["share"] - 0.25) < 1e-9
    assert found["totals"]["rejected_busy"] == 6.0
    assert found["unreadable"] == ["ocr-3"]


def test_report_from_recorded_json_writes_csv_markdown_and_plots(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    for rec in (
        record("direct", 1, 1, ghz([0.5] * 20)),
        record("direct", 1, 4, ghz([1.0, 2.0] * 10, rejected=3)),
        record("gateway", 1, 1, ghz([0.6] * 18)),
        record("gateway", 1, 4, ghz([1.1, 2.2] * 9, other=1)),
    ):
        (cells / f"{rec['cell']['key']}.json").write_text(json.dumps(rec))
    records = load_records(tmp_path)
    assert "secret.token" not in json.dumps(records)  # the bearer token is never kept
    meta = {
        "date": "2026-11-25 10:00 UTC",
        "image": "photo.jpg",
        "command": "ocrmesh bench sweep",
        "notes": ["x"],
    }
    written = write_report(tmp_path, records, meta)

    table = list(csv.DictReader(io.StringIO(written["csv"].read_text())))
    assert [r["key"] for r in table] == [
        "ocr1-auth1-direct-c1",
        "ocr1-auth1-direct-c4",
        "ocr1-auth1-gateway-c1",
        "ocr1-auth1-gateway-c4",
    ]
    assert table[1]["resource_exhausted"] == "3" and table[3]["other_failures"] == "1"
    assert table[0]["share"] == "ocr-1:0.75 ocr-2:0.25"
    assert table[0]["server_workers_replaced"] == "1"  # ocr-1 recycled a worker during the cell
    text = written["md"].read_text()
    assert "| direct | 1 | 1 | 4 | 23 | 2.00 | 1.50 |" in text
    assert "| ocr-1:0.75 ocr-2:0.25 | 1 |" in text
    assert "ocr-1 450" in text and "![throughput](throughput.png)" in text
    for name in ("latency", "throughput", "failures"):
        png = written[name].read_bytes()
        assert png.startswith(b"\x89PNG") and 5_000 < len(png) < 300_000
    assert json.loads(written["json"].read_text())["rows"][2]["path"] == "gateway"
    assert [r["concurrency"] for r in rows(records) if r["path"] == "gateway"] == [1, 4]


def test_report_says_where_the_cpu_went_and_leaves_it_out_for_older_records(tmp_path: Path) -> None:
    measured = record("direct", 1, 16, ghz([1.0] * 20, total_s=20.0))
    # 20 s of load: the OCR trees used 0.9 cores (18 CPU s for the 8 requests their counters saw),
    # the client 0.05, etcd and auth 0.03 together, and the machine 1.98 of its 2 cores.
    measured["cpu"] = {
        "seconds": 20.0,
        "cores": {"ocr-1": 0.9, "etcd": 0.02, "auth-1": 0.01, "client": 0.05},
        "machine_cores": 1.98,
        "stolen_cores": 0.12,
    }
    older = record("direct", 1, 4, ghz([1.0] * 20, total_s=20.0))
    found = {r["key"]: r for r in rows([measured, older])}
    cpu = found["ocr1-auth1-direct-c16"]
    assert abs(cpu["ocr_cores"] - 0.9) < 1e-9 and abs(cpu["client_cores"] - 0.05) < 1e-9
    assert abs(cpu["mesh_other_cores"] - 0.03) < 1e-9
    assert abs(cpu["ocr_cpu_per_request_s"] - 0.9 * 20.0 / 8) < 1e-9  # 6 + 2 completed
    assert abs(cpu["stolen_cores"] - 0.12) < 1e-9
    assert found["ocr1-auth1-direct-c4"]["machine_cores"] is None
    text = write_report(tmp_path, [measured, older], {"cpus": 2})["md"].read_text()
    assert "## CPU" in text
    assert "| direct | 1 | 1 | 16 | 1.00 | 0.90 | 2.25 | 0.05 | 0.03 | 1.98 | 1.00 | 0.12 |" in text
    assert "| direct | 1 | 1 | 4 | 1.00 | - | - | - | - | - | - | - |" in text
    (tmp_path / "old").mkdir()
    assert "## CPU" not in write_report(tmp_path / "old", [older], {"cpus": 2})["md"].read_text()


def test_rounds_give_each_cell_its_median_and_the_paired_ratio_to_the_4_client_cell(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    measured = {  # (clients, round): (OK calls, rejected, seconds)
        (1, 1): (10, 0, 10.0),
        (4, 1): (20, 0, 10.0),
        (4, 2): (16, 0, 10.0),
        (4, 3): (18, 0, 10.0),
        (16, 1): (21, 0, 10.0),
        (16, 2): (16, 2, 16.0),  # a slow round: 1.0 OK/s against 1.6 at 4 clients in the same round
        (16, 3): (19, 0, 10.0),
    }
    for (clients, round_), (ok, rejected, seconds) in measured.items():
        rec = record("direct", 1, clients, ghz([0.5 * clients] * ok, rejected=rejected, total_s=seconds))
        rec["round"] = round_
        name = rec["cell"]["key"] + ("" if round_ == 1 else f".r{round_}")
        (cells / f"{name}.json").write_text(json.dumps(rec))
    written = write_report(tmp_path, load_records(tmp_path), {"cpus": 2})

    by_cell = {r["key"]: r for r in csv.DictReader(io.StringIO(written["csv"].read_text()))}
    c16 = by_cell["ocr1-auth1-direct-c16"]
    assert (c16["rounds"], c16["calls"], c16["ok"], c16["resource_exhausted"]) == ("3", "58", "56", "2")
    assert (c16["ok_per_s"], c16["ok_per_s_min"], c16["ok_per_s_max"]) == ("1.9000", "1.0000", "2.1000")
    assert c16["failure_rate"] == f"{2 / 58:.4f}" and by_cell["ocr1-auth1-direct-c1"]["rounds"] == "1"
    per_round = list(csv.DictReader(io.StringIO(written["rounds"].read_text())))
    assert [(r["concurrency"], r["round"]) for r in per_round][:4] == [
        ("1", "1"),
        ("4", "1"),
        ("4", "2"),
        ("4", "3"),
    ]

    paired = {int(r["concurrency"]): r for r in csv.DictReader(io.StringIO(written["ratios"].read_text()))}
    assert {r["base_concurrency"] for r in paired.values()} == {"4"}  # 4 clients, not the lowest (1)
    # round by round: 2.1/2.0, 1.0/1.6, 1.9/1.8 -> median 1.05, min 0.625, max 1.0556
    assert (paired[16]["rounds"], paired[16]["ratio_median"]) == ("3", "1.0500")
    assert (paired[16]["ratio_min"], paired[16]["ratio_max"]) == ("0.6250", "1.0556")
    # pooled: 56 OK in 36 s against 54 OK in 30 s
    assert paired[16]["pooled"] == f"{(56 / 36) / (54 / 30):.4f}" and paired[16]["failed"] == "2"
    assert (paired[4]["ratio_median"], paired[4]["pooled"]) == ("1.0000", "1.0000")
    assert (paired[1]["rounds"], paired[1]["ratio_median"]) == ("1", "0.5000")  # paired in round 1 only

    text = written["md"].read_text()
    assert "Rounds: 3, each mesh's cells round by round" in text
    assert "## Paired throughput ratios (OK/s against the 4-client cell)" in text
    assert "| direct | 1 | 1 | 16 | 4 | 3 | 1.90 | 1.050 | 0.625-1.056 | 0.864 | 2 |" in text
    assert "| direct | 1 | 1 | 16 | 3 | 58 | 1.90 | 1.00-2.10 | 8.00 |" in text
    assert json.loads(written["json"].read_text())["ratios"][2]["ratio_min"] == 0.625


def test_ratio_base_is_4_clients_else_the_lowest_above_else_the_lowest() -> None:
    assert base_clients([1, 4, 64]) == 4
    assert base_clients([2, 8, 16]) == 8
    assert base_clients([1, 2]) == 1


def test_the_share_of_model_runs_that_ran_wide() -> None:
    assert wide_share({"model_runs": 40.0, "wide_model_runs": 30.0}) == 0.75
    assert wide_share({"widened": 3.0}) is None  # a record from before the counters
    assert wide_text({"server_widened": 12, "server_wide_share": 0.75}) == "12 (75 %)"
    assert wide_text({"server_widened": 12, "server_wide_share": None}) == "12"
