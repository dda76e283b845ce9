"""The hardening bench's edge probe, its pure parts: the payload, a run's figures, the per-path summary
and the bound it gives on Recognize throughput."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bench.process_cpu import CLIENT, CpuUse
from bench.studies.hardening_bench import cell_summary, mesh_cpu_s
from bench.studies.hardening_edge import (
    edge_report,
    edge_summary,
    markdown_edge,
    probe_payload,
    probe_run,
    recognize_cpu_s,
    throughput_bound,
)
from ocr_svc.guardrails import ImageRejected, Limits, Reason, inspect


def test_probe_payload_is_deterministic_and_not_an_image() -> None:
    payload = probe_payload(70_680)
    assert len(payload) == 70_680 and payload == probe_payload(70_680)
    with pytest.raises(ImageRejected) as refused:
        inspect(payload, Limits())
    assert refused.value.reason == Reason.NOT_AN_IMAGE


def test_throughput_bound_is_extra_cpu_over_cpu_per_call() -> None:
    assert throughput_bound(600.0, 0.6) == pytest.approx(0.001)  # 600 µs on 0.6 s: at most 0.1 %
    assert throughput_bound(-50.0, 0.6) == 0.0  # cheaper when hardened costs nothing
    with pytest.raises(ValueError):
        throughput_bound(10.0, 0.0)


def _report(codes: dict[str, int], seconds: float) -> dict[str, Any]:
    return {"count": sum(codes.values()), "total": seconds * 1e9, "statusCodeDistribution": codes}


def _run(calls_per_s: float, us_per_call: float, codes: str = "InvalidArgument") -> dict[str, Any]:
    calls = int(calls_per_s * 5)
    return {
        "calls": calls,
        "seconds": 5.0,
        "calls_per_s": calls_per_s,
        "status_codes": {codes: calls},
        "expected_share": 1.0 if codes == "InvalidArgument" else 0.0,
        "mesh_cpu_s": us_per_call * calls / 1e6,
        "cpu_us_per_call": us_per_call,
        "cpu_us_per_call_by_process": {"ocr-1": us_per_call / 2, "gateway": us_per_call / 2},
        "other_mesh_cores": 0.01,
        "client_cores": 0.9,
    }


def test_probe_run_counts_the_arms_mesh_only() -> None:
    use = CpuUse(
        seconds=2.0,
        cores={"hardened:ocr-1": 0.5, "hardened:gateway": 0.25, "unhardened:ocr-1": 0.01, CLIENT: 0.9},
        machine_cores=1.7,
    )
    run = probe_run(_report({"InvalidArgument": 990, "Unavailable": 10}, 2.0), use, "hardened")
    assert run["calls"] == 1000 and run["calls_per_s"] == pytest.approx(500.0)
    assert run["expected_share"] == pytest.approx(0.99)
    assert run["mesh_cpu_s"] == pytest.approx(1.5)  # (0.5 + 0.25) cores x 2 s; not the client's
    assert run["cpu_us_per_call"] == pytest.approx(1500.0)
    assert run["cpu_us_per_call_by_process"] == {
        "ocr-1": pytest.approx(1000.0),
        "gateway": pytest.approx(500.0),
    }
    assert run["other_mesh_cores"] == pytest.approx(0.01)


def test_edge_summary_pairs_rounds_and_flags_runs_of_other_codes() -> None:
    runs = {
        "hardened": [_run(900, 1100), _run(1000, 1050), _run(950, 1090)],
        "unhardened": [_run(1000, 1000), _run(1000, 1000), _run(1000, 1000, codes="Unavailable")],
    }
    s = edge_summary("gateway", runs)
    assert s["ratios"] == pytest.approx([0.9, 1.0, 0.95])
    assert s["median_ratio"] == pytest.approx(0.95) and s["min_ratio"] == pytest.approx(0.9)
    assert s["pooled_ratio"] == pytest.approx(950 / 1000)
    assert s["extra_us_per_call"] == pytest.approx([100, 50, 90])
    assert s["extra_us_per_call_median"] == pytest.approx(90) and s["extra_us_per_call_max"] == pytest.approx(
        100
    )
    assert s["arms"]["hardened"]["cpu_us_per_call_median"] == pytest.approx(1090)
    assert s["arms"]["unhardened"]["status_codes"] == {"InvalidArgument": 10_000, "Unavailable": 5000}
    assert s["arms"]["hardened"]["cpu_us_per_call_by_process"]["gateway"] == pytest.approx(545)
    assert len(s["errors"]) == 1 and "gateway unhardened round 3" in s["errors"][0]


def test_recognize_cpu_per_call_comes_from_the_paths_cells_else_the_option() -> None:
    hard = {"ok": 20, "seconds": 20.0, "failures": 0, "p95_s": 3.0, "peak_rss_mib": 700.0, "mesh_cpu_s": 12.0}
    hard["ok_per_s"] = 1.0
    soft = {**hard, "ok": 30, "ok_per_s": 1.5, "mesh_cpu_s": 16.0}
    cell = cell_summary({"hardened": [hard], "unhardened": [soft]})
    assert cell["mesh_cpu_s_per_ok"] == pytest.approx(28 / 50)
    cells = {"direct-c4": cell, "direct-c16": {**cell, "mesh_cpu_s_per_ok": 0.7}, "gateway-c4": cell}
    assert recognize_cpu_s(cells, "direct") == pytest.approx(0.56)  # the smallest: the largest bound
    assert recognize_cpu_s(cells, "bff") is None
    assert mesh_cpu_s(CpuUse(2.0, {"a": 0.5, "b": 0.25, CLIENT: 1.0}, 1.8)) == pytest.approx(1.5)

    runs = {"direct": {"hardened": [_run(1000, 1060)], "unhardened": [_run(1000, 1000)]}}
    ns = argparse.Namespace(edge_rounds=1, edge_duration_s=5.0, edge_concurrency=16, recognize_cpu_s=0.6)
    measured = edge_report(runs, cells, ns, 70_680)["paths"]["direct"]["bound"]
    assert measured["source"] == "Recognize cells of this run"
    assert measured["median"] == pytest.approx(60e-6 / 0.56)
    given = edge_report(runs, {}, ns, 70_680)
    assert given["paths"]["direct"]["bound"]["source"] == "--recognize-cpu-s"
    assert given["paths"]["direct"]["bound"]["median"] == pytest.approx(1e-4)
    text = "\n".join(markdown_edge(given))
    assert "Edge probe" in text and "0.010 %" in text and "ERROR" not in text
    ns.recognize_cpu_s = None
    assert edge_report(runs, {}, ns, 70_680)["paths"]["direct"]["bound"] is None
    assert "not measured" in "\n".join(markdown_edge(edge_report(runs, {}, ns, 70_680)))
