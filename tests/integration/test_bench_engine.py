"""`ocrmesh bench engine`: a real worker pool fed straight from the admission queue, no gRPC."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.corpus import CORPUS, ROOT

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"


def test_engine_bench_recognises_the_asked_number_of_images_and_reports_the_provider() -> None:
    argv = [sys.executable, "-m", "cli", "bench", "engine", str(PHOTO), "--workers", "1", "-c", "2"]
    done = subprocess.run(
        [*argv, "-n", "3", "--json", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["count"] >= 3
    assert result["images_per_s"] > 0
    assert result["execution_provider"] == "CPUExecutionProvider"
    assert 0 < result["latency_s"]["p50"] <= result["latency_s"]["p95"]
