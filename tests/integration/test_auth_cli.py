"""`ocrmesh serve auth` as a real process: ready file, serves, drains and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc


async def test_serve_auth_process(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh.cli",
        "serve",
        "auth",
        "--port",
        "0",
        "--db",
        f"sqlite+aiosqlite:///{tmp_path / 'state' / 'auth.db'}",
        "--bcrypt-cost",
        "4",
        "--metrics-port",
        "-1",
        "--ready-file",
        str(ready),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(300):
            if ready.exists() or process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert ready.exists(), (await process.stderr.read()).decode()  # type: ignore[union-attr]
        address = json.loads(ready.read_text())["address"]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            created = await stub.Register(
                auth_pb2.RegisterRequest(username="cli-user", password="password123")
            )
            assert created.user.username == "cli-user"
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert f"listening on {address}" in out.decode()
    assert "SIGTERM: draining" in out.decode()
    assert (tmp_path / "state" / "auth.db").exists()
