"""A tiny real sweep (1 OCR instance, 1 and 2 clients, 2 rounds of 2 s) through `ocrmesh bench sweep`, then a
resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import CORPUS
from tests.integration.ocr_fixtures import ROOT


def sweep(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "cli", "bench", "sweep", "--ocr", "1", "--auth", "1",
        "--concurrency", "1,2", "--duration", "2s", "--warmup", "1s", "--path", "direct",
        "--image", str(CORPUS / "real" / "rapidocr_ch_en_num.jpg"),
        "--out", str(out), "--data-dir", str(data), "--no-progress", *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=280, env={**os.environ, "COLUMNS": "200"}
    )


def test_tiny_sweep_records_cells_and_report_then_resumes_without_rerunning(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    first = sweep(out, data, "--rounds", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    cells = sorted((out / "cells").glob("*.json"))
    names = [
        "ocr1-auth1-direct-c1",
        "ocr1-auth1-direct-c1.r2",
        "ocr1-auth1-direct-c2",
        "ocr1-auth1-direct-c2.r2",
    ]
    assert [p.stem for p in cells] == names
    # one mesh, round 1 by rising clients, round 2 reversed: c1, c2, c2 again, c1 again
    written = sorted(cells, key=lambda p: p.stat().st_mtime_ns)
    assert [p.stem for p in written] == [names[0], names[2], names[3], names[1]]
    assert first.stderr.count("starting etcd") == 1 and "ocr1-auth1-direct-c2 round 2/2" in first.stderr
    for path in cells:
        rec = json.loads(path.read_text())
        assert rec["round"] == (2 if path.stem.endswith(".r2") else 1)
        assert rec["summary"]["ok"] > 0 and rec["summary"]["other_failures"] == 0, rec["summary"]
        assert rec["ghz"]["statusCodeDistribution"]["OK"] == rec["summary"]["ok"]
        # the OCR instance's own counters saw the calls (tokens required: auth was on)
        assert rec["server"]["instances"]["ocr-1"]["completed"] >= rec["summary"]["ok"]
        assert rec["server"]["instances"]["ocr-1"]["share"] == 1.0
        assert rec["server"]["totals"]["compute_ms"] > 0
        assert rec["rss_mib"]["by_process"]["ocr-1"] > 50 and "etcd" in rec["rss_mib"]["by_process"]
        assert "Bearer" not in path.read_text()
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(int(r["concurrency"]), r["rounds"]) for r in rows] == [(1, "2"), (2, "2")]
    assert len(list(csv.DictReader((out / "sweep-rounds.csv").open()))) == 4
    ratios = list(csv.DictReader((out / "sweep-ratios.csv").open()))
    # no 4-client cell: both are compared with 1 client, paired in both rounds
    assert [(r["concurrency"], r["base_concurrency"], r["rounds"]) for r in ratios] == [
        ("1", "1", "2"),
        ("2", "1", "2"),
    ]
    assert float(ratios[1]["ratio_min"]) > 0 and ratios[0]["ratio_median"] == "1.0000"
    text = (out / "sweep.md").read_text()
    assert "| direct | 1 | 1 | 2 |" in text and "Rounds: 2, each mesh's cells round by round" in text
    assert "## Paired throughput ratios (OK/s against the 1-client cell)" in text
    assert all((out / f"{name}.png").stat().st_size > 5000 for name in ("latency", "throughput", "failures"))
    stamps = [p.stat().st_mtime_ns for p in cells]

    again = sweep(out, data, "--rounds", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 of 4 cell rounds (2 cells x 2) already recorded" in again.stderr
    assert "starting etcd" not in again.stderr  # nothing left to measure: no mesh was started
    assert [p.stat().st_mtime_ns for p in cells] == stamps


@pytest.mark.slow
def test_gateway_and_bff_paths_reach_ocr_with_tokens_and_sessions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = sweep(out, tmp_path / "data", "--path", "gateway,bff", "--concurrency", "1,8")
    assert done.returncode == 0, done.stdout + done.stderr
    for key in ("ocr1-auth1-gateway-c1", "ocr1-auth1-gateway-c8", "ocr1-auth1-bff-c1", "ocr1-auth1-bff-c8"):
        rec = json.loads((out / "cells" / f"{key}.json").read_text())
        # 8 clients on one worker: some are turned away (RESOURCE_EXHAUSTED / 429), none fail otherwise
        assert rec["summary"]["ok"] > 0 and rec["summary"]["other_failures"] == 0, (key, rec["summary"])
        assert rec["server"]["instances"]["ocr-1"]["completed"] >= rec["summary"]["ok"]
        assert {"gateway", "bff"} <= set(rec["rss_mib"]["by_process"])
