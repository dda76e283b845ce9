"""`bench/auth_bench.py` end to end at a tiny scale: a real auth process, both reports written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.studies import auth_bench


def test_auth_bench_writes_markdown_and_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    auth_bench.add_arguments(parser)
    argv = ["--bcrypt-cost", "4", "--seconds", "0.3", "--rounds", "2", "--verify-seconds", "0.2"]
    ns = parser.parse_args([*argv, "--users", "4", "-c", "2", "--out", str(tmp_path)])
    assert auth_bench.run(ns) == 0
    [report] = tmp_path.glob("auth-*.json")
    results = json.loads(report.read_text())
    logins, verification = results["logins"], results["verification"]
    assert logins["logins_ok"] > 0 and logins["login_errors"] == {}
    assert logins["raw_bcrypt_all_cores_per_s"] > 0 and len(logins["rounds"]) == 2
    assert verification["interceptor_signature_checked"]["per_s"] > 0
    text = report.with_suffix(".md").read_text()
    assert "logins/s" in text and "interceptor" in text
