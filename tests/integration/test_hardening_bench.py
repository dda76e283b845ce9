"""`ocrmesh bench hardening` end to end on a tiny budget: both arms answer on both paths, the report has
its ratios, the unhardened arm's processes really run without issue 17's protections, and the edge
probe's calls are answered INVALID_ARGUMENT with the mesh's CPU per call measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import CORPUS

# benchmark smoke run (~40-60 s, two meshes): `ocrmesh bench hardening` end to end
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_hardening_bench_compares_hardened_and_unhardened_meshes(tmp_path: Path) -> None:
    out = tmp_path / "hardening"
    argv = [sys.executable, "-m", "cli", "bench", "hardening", "-c", "1", "--rounds", "1", "-z", "1s"]
    argv += ["--warmup", "0s", "--no-progress", "--out", str(out)]
    argv += ["--edge-rounds", "2", "--edge-duration", "1s", "--edge-concurrency", "4"]
    argv += ["--image", str(CORPUS / "real" / "rapidocr_ch_en_num.jpg")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["cpu_model"] and report["paths"] == ["direct", "gateway"]
    facts = report["arm_facts"]
    assert facts["hardened"]["ocr_hardened"] == [True] and facts["hardened"]["gateway_hardened"] is True
    assert facts["hardened"]["envoy"] == {"overload_manager": True, "upstream_keepalive": True}
    assert facts["unhardened"]["ocr_hardened"] == [False] and facts["unhardened"]["gateway_hardened"] is False
    assert facts["unhardened"]["envoy"] == {"overload_manager": False, "upstream_keepalive": False}
    assert sorted(report["cells"]) == ["direct-c1", "gateway-c1"]
    for cell in report["cells"].values():
        assert len(cell["ratios"]) == 1 and cell["pooled_ratio"] > 0
        assert cell["min_ratio"] <= cell["median_ratio"] <= cell["max_ratio"]
        for arm in ("hardened", "unhardened"):
            assert cell["runs"][arm][0]["ok"] >= 1 and cell["arms"][arm]["failures"] == 0
            assert cell["arms"][arm]["peak_rss_mib"] > 50
        assert cell["mesh_cpu_s_per_ok"] > 0.01  # a Recognize call costs the mesh CPU (~0.6 s)
    edge = report["edge"]
    assert edge["errors"] == [] and sorted(edge["paths"]) == ["direct", "gateway"]
    for probe in edge["paths"].values():
        assert len(probe["ratios"]) == 2 and probe["pooled_ratio"] > 0
        for arm in ("hardened", "unhardened"):
            figures = probe["arms"][arm]
            assert figures["status_codes"].get("InvalidArgument", 0) > 0
            assert figures["cpu_us_per_call_median"] > 0
            assert all(run["expected_share"] >= 0.99 for run in probe["runs"][arm])
        assert probe["bound"]["source"] == "Recognize cells of this run" and probe["bound"]["median"] >= 0
    assert set(report["per_call"]["added_ns"]) == {"revoked_session_check", "malformed_message_wrapper"}
    text = out.with_suffix(".md").read_text()
    assert "hardened/unhardened" in text and "Not switched off" in text
    assert "Edge probe: every hardened layer" in text and "How the bound is derived" in text
