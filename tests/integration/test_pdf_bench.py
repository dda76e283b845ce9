"""`bench/studies/pdf_bench.py` end to end at a tiny scale: a real OCR instance, a 3-page PDF, reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.studies import pdf_bench

pytestmark = pytest.mark.slow  # benchmark smoke run (~25 s): `ocrmesh bench pdf` end to end


def test_pdf_bench_reads_the_pdf_in_order_measures_both_callers_and_the_refusals(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    pdf_bench.add_arguments(parser)
    ns = parser.parse_args(
        ["--pages", "3", "--samples", "2", "--rounds", "1", "--pdf-runs", "1", "--out", str(tmp_path)]
    )
    assert pdf_bench.run(ns) == 0
    [report] = tmp_path.glob("pdf-*.json")
    result = json.loads(report.read_text())
    [alone] = result["pdf"]["alone"]
    assert alone["page_numbers_in_order"] and alone["pages_with_text"] == 3
    assert result["pdf"]["pages_per_s"] > 0 and result["pdf"]["peak_rss_mib"] > 50
    fair = result["fairness"]
    assert fair["unloaded"]["n"] == fair["loaded"]["n"] == 2 and fair["p95_ratio"] > 0
    refused = result["refusals"]
    assert refused.pop("health_after") == "SERVING"
    for name, row in refused.items():
        assert row["code"] == "INVALID_ARGUMENT" and row["reason"] == row["expected_reason"], name
    text = report.with_suffix(".md").read_text()
    assert "Refused from the header" in text and result["meta"]["cpu_model"] in text
