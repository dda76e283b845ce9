"""`ocrmesh bench mtls` runs end to end on a tiny budget: both paths answer, nothing fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # benchmark smoke run (~17 s): `ocrmesh bench mtls` end to end

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_mtls_bench_compares_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "mtls"
    argv = [sys.executable, "-m", "cli", "bench", "mtls", "-n", "20", "--rounds", "1", "--seconds", "2"]
    argv += ["--ocr-rounds", "1", "--workers", "1", "-c", "2", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["latency"]["failed"] == 0 and report["throughput"]["failed"] == 0
    for path in ("plaintext", "mtls"):
        assert report["latency"]["per_round"][path][0]["ok"] == 20
        assert report["throughput"]["per_round"][path][0]["ok"] >= 1
    assert "added per mTLS hop" in out.with_suffix(".md").read_text()
