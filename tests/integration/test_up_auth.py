"""`ocrmesh up` runs etcd, auth and OCR requiring tokens; a registered user's token gets OCR done."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import stat
import sys
from pathlib import Path

import grpc
import psutil
import pytest
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh import balancer
from mesh.credentials import bearer
from mesh.processes import free_port
from tests.integration.etcd_fixtures import eventually
from tests.integration.identity_fixtures import acting_as
from tests.integration.ocr_fixtures import ROOT

PASSWORD = "correct horse battery"


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port P whose neighbour P-1 is free too (auth ports count down from --auth-port)."""
    while True:
        port = free_port()
        if _bindable(port - 1):
            return port


async def test_up_starts_auth_before_ocr_and_ocr_requires_tokens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    argv = [
        sys.executable, "-m", "cli", "up", "--ocr", "1", "--workers", "1", "--auth", "2",
        "--etcd-port", str(free_port()), "--ocr-port", str(free_port()),
        "--auth-port", str(free_port_pair()), "--data-dir", str(data),
        "--gateway-port", "0", "--gateway-admin-port", "0", "--xds-port", "0", "--bff-port", "0",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    printed: list[str] = []
    try:
        while not any(line.startswith("logs:") for line in printed):
            line = await asyncio.wait_for(process.stdout.readline(), 120)
            assert line, "ocrmesh up exited early:\n" + "".join(printed)
            printed.append(line.decode())
        text = "".join(printed)
        started = [line.split()[1] for line in printed if line.startswith("starting ")]
        assert started == ["etcd", "auth-1", "auth-2", "ocr-1", "gateway", "bff"], text
        ready = {name: json.loads((data / "run" / f"{name}.json").read_text()) for name in started[1:]}
        # the gateway and the BFF picked free ports and the summary says where they are
        assert f"gateway: {ready['gateway']['address']}," in text and f"web:  {ready['bff']['url']} " in text
        auth_address, ocr_address = ready["auth-1"]["address"], ready["ocr-1"]["address"]
        assert f"auth: {auth_address}" in text and "--login alice" in text
        assert ready["ocr-1"]["require_auth"] is True
        # The accounts database and the key-encryption passphrase are the owner's alone, and the
        # signing key in the database is sealed (an encrypted PKCS#8 PEM, not a readable one).
        for secret in ("auth.db", "key-passphrase"):
            assert stat.S_IMODE((data / secret).stat().st_mode) == 0o600, secret
        with sqlite3.connect(data / "auth.db") as db:
            pems = [row[0] for row in db.execute("SELECT private_pem FROM signing_keys")]
        assert pems and all(pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----") for pem in pems), pems

        # Every service requires a mesh client certificate: plaintext is refused in the handshake,
        # and people's commands use the `cli` identity `ocrmesh up` issued.
        assert f"export OCRMESH_IDENTITY_DIR={(data / 'identity' / 'cli').resolve()}" in text
        async with balancer.direct_channel(ocr_address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ocr_pb2_grpc.OcrServiceStub(plain).GetInfo(ocr_pb2.GetInfoRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with acting_as(data / "identity" / "cli"):
            async with (
                balancer.direct_channel(auth_address, "auth") as auth_channel,
                balancer.direct_channel(ready["auth-2"]["address"], "auth") as other_channel,
                balancer.direct_channel(ocr_address, "ocr") as ocr_channel,
            ):
                await auth_pb2_grpc.AuthServiceStub(auth_channel).Register(
                    auth_pb2.RegisterRequest(username="alice", password=PASSWORD), timeout=10
                )
                # The second instance shares the database: alice can log in there too.
                login = await auth_pb2_grpc.AuthServiceStub(other_channel).Login(
                    auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10
                )
                ocr = ocr_pb2_grpc.OcrServiceStub(ocr_channel)
                try:
                    await ocr.GetInfo(ocr_pb2.GetInfoRequest(), timeout=5)
                    raise AssertionError("OCR answered without a token")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED

                async def info_with_token() -> bool:
                    reply = await ocr.GetInfo(
                        ocr_pb2.GetInfoRequest(), metadata=bearer(login.tokens.access_token), timeout=5
                    )
                    return bool(reply.workers == 1)

                await eventually(info_with_token, timeout=5)
        pids = [info["pid"] for info in ready.values()]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
    assert process.returncode == 0
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
