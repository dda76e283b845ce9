"""`ocrmesh serve auth` as a real process: ready file, serves, drains and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from tests.integration.auth_fixtures import start_auth
from tests.integration.service_process import stop


async def test_serve_auth_process(tmp_path: Path) -> None:
    db = tmp_path / "state" / "auth.db"
    svc = await asyncio.to_thread(start_auth, tmp_path, "--db", f"sqlite+aiosqlite:///{db}")
    try:
        async with grpc.aio.insecure_channel(svc.address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            request = auth_pb2.RegisterRequest(username="cli-user", password="password123")
            created = await stub.Register(request)
            assert created.user.username == "cli-user"
    finally:
        returncode = await asyncio.to_thread(stop, svc.proc)  # SIGTERM
    out = svc.log_text()
    assert returncode == 0, out
    assert f"listening on {svc.address}" in out
    assert "SIGTERM: draining" in out
    assert db.exists()
