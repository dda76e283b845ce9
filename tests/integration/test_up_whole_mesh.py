"""`ocrmesh up --ocr 2 --auth 1` as run by hand: ready, OCR via gateway and BFF, restarts, no orphans."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh import balancer
from tests.corpus import CORPUS
from tests.integration.etcd_fixtures import eventually
from tests.integration.gateway_fixtures import login_through

ROOT = Path(__file__).resolve().parents[2]
PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
PARTS = ("auth-1", "ocr-1", "ocr-2", "gateway", "bff")


def _ready(run_dir: Path, name: str) -> dict[str, object] | None:
    try:
        found: dict[str, object] = json.loads((run_dir / f"{name}.json").read_text())
        return found
    except (OSError, ValueError):
        return None


def _tree(pid: int) -> set[int]:
    """`pid` and every process below it (the supervisor's children start their own sessions)."""
    try:
        root = psutil.Process(pid)
        return {pid, *(p.pid for p in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def _ocr_via_gateway(address: str, token: str) -> str:
    async with balancer.direct_channel(address) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        request = ocr_pb2.RecognizeRequest(image=PHOTO.read_bytes(), filename=PHOTO.name)
        answer = await stub.Recognize(request, metadata=[("authorization", f"Bearer {token}")], timeout=120)
        return str(answer.result.text)


async def _ocr_via_bff(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        client.headers["X-CSRF-Token"] = (await client.get("/api/csrf")).json()["csrf"]
        login = {"username": f"up-{uuid.uuid4().hex[:8]}", "password": "correct horse 42"}
        assert (await client.post("/api/register", json=login)).status_code == 201
        assert (await client.post("/api/login", json=login)).status_code == 200
        got = await client.post("/api/ocr", files={"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})
        assert got.status_code == 200, got.text
        return str(got.json()["text"])


@pytest.mark.timeout(600)
async def test_up_serves_through_gateway_and_bff_restarts_a_killed_child_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "mesh"
    argv = [sys.executable, "-m", "cli", "up", "--ocr", "2", "--auth", "1", "--data-dir", str(data)]
    for flag in ("--etcd-port", "--ocr-port", "--auth-port", "--gateway-port", "--gateway-admin-port"):
        argv += [flag, "0"]
    argv += ["--xds-port", "0", "--bff-port", "0"]
    log = (tmp_path / "up.log").open("wb")
    up = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True
    )
    seen: set[int] = set()
    try:
        run_dir = data / "run"

        async def all_ready() -> bool:
            assert up.returncode is None, (tmp_path / "up.log").read_text()[-3000:]
            return all(_ready(run_dir, name) for name in PARTS) and "ocrmesh is up" in (
                tmp_path / "up.log"
            ).read_text(errors="replace")

        await eventually(all_ready, 420, interval=0.5)
        seen |= _tree(up.pid)
        info = {name: _ready(run_dir, name) or {} for name in PARTS}
        assert {info[name]["pid"] for name in PARTS} <= seen
        gateway, bff = str(info["gateway"]["address"]), str(info["bff"]["url"])

        # One OCR request through each front door.
        token = await login_through(gateway, f"up-{uuid.uuid4().hex[:8]}")
        assert "正品促销" in await _ocr_via_gateway(gateway, token)
        assert "正品促销" in await _ocr_via_bff(bff)

        # A killed child is started again and serves again.
        victim = int(str(info["ocr-1"]["pid"]))
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            again = _ready(run_dir, "ocr-1")
            return again is not None and again.get("pid") not in (None, victim)

        await eventually(replaced, 300, interval=0.5)
        seen |= _tree(up.pid)
        assert "ocr-1 exited" in (tmp_path / "up.log").read_text(errors="replace")
        assert "正品促销" in await _ocr_via_gateway(gateway, token)

        # Stopping `up` stops everything it started, the restarted child included.
        up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 120) == 0
        left = await asyncio.to_thread(lambda: [p for p in seen if p != up.pid and _alive(p)])
        assert not left, [psutil.Process(p).cmdline() for p in left if _alive(p)]
    finally:
        if up.returncode is None:
            os.killpg(up.pid, signal.SIGKILL)
            await up.wait()
        for pid in seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
