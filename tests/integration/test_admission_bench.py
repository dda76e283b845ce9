"""`bench/admission_bench.py` end to end at a tiny scale: a real OCR instance, both client kinds, reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.studies import admission_bench

pytestmark = pytest.mark.slow  # benchmark smoke run (~40 s): `ocrmesh bench admission` end to end


def test_admission_bench_runs_both_client_kinds_and_writes_reports(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    admission_bench.add_arguments(parser)
    argv = ["-c", "6", "--rss-concurrency", "12", "-z", "3s", "-t", "20s", "--rounds", "1", "--workers", "1"]
    ns = parser.parse_args([*argv, "--out", str(tmp_path)])
    assert admission_bench.run(ns) == 0
    [report] = tmp_path.glob("admission-*.json")
    result = json.loads(report.read_text())
    cells = result["cells"]
    assert set(cells) == {"honor@c6", "ghz@c6", "honor@c12", "ghz@c12"}
    for cell in cells.values():
        assert cell["ok"] > 0 and cell["ok"] <= cell["calls"]
        # Every call is answered (OK or a refusal); nothing else goes wrong, nothing is lost.
        assert set(cell["status_codes"]) <= {"OK", "ResourceExhausted", "DeadlineExceeded"}
        assert cell["server"]["completed"] >= cell["ok"] and cell["peak_rss_mib"] > 50
    assert result["ratios_ghz_vs_honor"]["c6"] > 0 and result["meta"]["workers"] == 1
    text = report.with_suffix(".md").read_text()
    assert "retry-at-once / well-behaved" in text and result["meta"]["cpu_model"] in text
