"""`ocrmesh bench --mix login=1,ocr=3`: logins and OCR calls against a real mesh, figures per kind."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from bench.sweep_paths import new_accounts, register
from deploy.supervisor import LocalMesh, MeshPorts
from tests.corpus import CORPUS
from tests.integration.ocr_fixtures import ROOT

# benchmark smoke run (~15 s): the sweep's mixed workload; test_sweep_tiny keeps the sweep in make test
pytestmark = pytest.mark.slow


async def test_mixed_load_logs_in_and_recognizes_through_the_mesh(tmp_path: Path) -> None:
    mesh = LocalMesh(ocr=1, auth=1, gateway=False, bff=False, data_dir=tmp_path, ports=MeshPorts.ephemeral())
    async with mesh:
        account = new_accounts(1)[0]
        await register(mesh.addresses("auth")[0], account)
        argv = [
            sys.executable, "-m", "cli", "bench", "--mix", "login=1,ocr=3", "--etcd", mesh.etcd.endpoint,
            "--image", str(CORPUS / "real" / "rapidocr_ch_en_num.jpg"), "--login", account.username,
            "-c", "2", "-n", "12", "-O", "json", "--no-progress",
        ]  # fmt: skip
        env = {**os.environ, "OCRMESH_PASSWORD": account.password}
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    text = err.decode()
    assert proc.returncode == 0, text
    report = json.loads(out)
    assert report["count"] == 12
    assert report["statusCodeDistribution"].get("OK", 0) >= 10, report["statusCodeDistribution"]
    # 1 login in every 4 calls: 3 logins, 9 OCR calls, each kind reported on its own line
    assert "ocrmesh bench: login: 3 calls" in text and "ocrmesh bench: ocr: 9 calls" in text
