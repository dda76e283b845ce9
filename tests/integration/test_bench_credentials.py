"""`ocrmesh bench --token` (and OCRMESH_TOKEN) send `authorization: Bearer …` on every call."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh import lifecycle
from tests.integration.ocr_fixtures import ROOT


class RecordingOcr(ocr_pb2_grpc.OcrServiceServicer):  # type: ignore[misc]
    """Answers GetInfo and remembers the authorization header of each call."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def GetInfo(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ocr_pb2.GetInfoResponse:
        self.seen.append(dict(context.invocation_metadata() or ()).get("authorization", ""))
        return ocr_pb2.GetInfoResponse(instance_id="recording")


async def _bench(address: str, *flags: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "cli",
            "bench",
            "--call",
            "ocrmesh.ocr.v1.OcrService.GetInfo",
            "-n",
            "5",
            "-c",
            "1",
            "--no-progress",
            *flags,
            address,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env,
    )


async def test_token_flag_and_env_reach_the_server() -> None:
    servicer = RecordingOcr()
    server = lifecycle.new_server()
    ocr_pb2_grpc.add_OcrServiceServicer_to_server(servicer, server)
    address = lifecycle.bind(server, "127.0.0.1", 0)
    await server.start()
    try:
        env = {k: v for k, v in os.environ.items() if k != "OCRMESH_TOKEN"}
        proc = await _bench(address, "--token", "flag-token", env=env)
        assert proc.returncode == 0, proc.stderr
        assert servicer.seen == ["Bearer flag-token"] * 5
        servicer.seen.clear()
        proc = await _bench(address, env={**env, "OCRMESH_TOKEN": "env-token"})
        assert proc.returncode == 0, proc.stderr
        assert servicer.seen == ["Bearer env-token"] * 5
        servicer.seen.clear()
        both = await _bench(address, "--token", "a", "--login", "alice:pw", env=env)
        assert both.returncode == 2 and "either --token or --login" in both.stderr
        assert servicer.seen == []
    finally:
        await server.stop(0)
