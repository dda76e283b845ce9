"""Proxyless gRPC: `ocrmesh ocr --via xds` balances over registered instances from our control plane."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from etcd.launcher import EtcdProcess
from gateway.control_plane import ControlPlane, XdsService
from tests.corpus import CORPUS
from tests.integration.etcd_fixtures import etcd_fixture, eventually
from tests.integration.ocr_fixtures import ROOT, start_ocr, stop

__all__ = ["etcd_fixture"]  # pytest fixture used below

LINE = CORPUS / "real" / "cnocr_rand_cn1.png"


async def test_ocr_via_xds_balances_across_instances(tmp_path: Path, etcd: EtcdProcess) -> None:
    control_plane = ControlPlane(etcd.endpoint)
    xds = XdsService(control_plane, "127.0.0.1", 0)
    await xds.start()
    started = []
    try:
        for name in ("px-a", "px-b"):
            common = ("--workers", "1", "--etcd", etcd.endpoint, "--instance-id", name)
            started.append(await asyncio.to_thread(start_ocr, tmp_path, *common))
        await eventually(lambda: _registered(control_plane, 2), 20)
        # The CLI in its own process: gRPC reads the xDS bootstrap once per process.
        argv = [sys.executable, "-m", "cli", "ocr", "--via", "xds", "--xds", xds.address, "--json"]
        argv += ["--no-det", "--no-cls", *[str(LINE)] * 12]
        done = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, capture_output=True, timeout=240)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        results = json.loads(done.stdout)
        served = [r["served_by"]["instance_id"] for r in results]
        assert len(served) == 12 and set(served) == {"px-a", "px-b"}, served
        # The proxyless client is a node of the control plane, in its own group, and ACKed its config.
        [node] = [n for n in control_plane.cache.nodes.values() if n.group == "proxyless"]
        assert node.cluster == "ocrmesh-proxyless"
        assert all(t.acked for t in node.types.values()) and len(node.types) == 4
    finally:
        for svc in started:
            await asyncio.to_thread(stop, svc.proc)
        await xds.stop()


async def _registered(control_plane: ControlPlane, n: int) -> bool:
    return len([i for i in control_plane.discovery.endpoints().values() if i.service == "ocr"]) >= n
