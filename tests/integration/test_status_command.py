"""`ocrmesh status` against a real etcd and a real registered OCR instance."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from etcd.launcher import EtcdProcess
from tests.integration.etcd_fixtures import etcd_fixture
from tests.integration.ocr_fixtures import ROOT, running_ocr

__all__ = ["etcd_fixture"]


async def test_status_lists_instances_with_health_and_load(tmp_path: Path, etcd: EtcdProcess) -> None:
    with running_ocr(
        tmp_path, "--workers", "1", "--instance-id", "ocr-status-1", "--etcd", etcd.endpoint
    ) as svc:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cli", "status", "--etcd", etcd.endpoint, "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        snapshot = json.loads(proc.stdout)
        assert snapshot["services"]["ocr"] == {"instances": 1, "healthy": 1}
        (view,) = snapshot["instances"]
        assert view["id"] == "ocr-status-1" and view["address"] == svc.address
        assert view["health"] == "SERVING" and view["execution_provider"] == "CPUExecutionProvider"
        assert view["queue"] == "0 waiting, ~0.0 s" and view["in_flight"] == 0
        table = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cli", "status", "--etcd", etcd.endpoint],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert "ocr-status-1" in table.stdout and "SERVING" in table.stdout


def test_status_explains_when_etcd_is_down() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "status", "--etcd", "127.0.0.1:9", "--timeout", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot read the registry" in proc.stderr and "make up" in proc.stderr
