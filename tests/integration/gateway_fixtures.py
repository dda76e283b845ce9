"""Start real `ocrmesh serve gateway` / `serve xds` processes for tests; Envoy admin and token helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from mesh import balancer
from mesh.registry import instance_key
from tests.integration import service_process
from tests.integration.ocr_fixtures import stop

PASSWORD = "correct horse battery"


@dataclass
class GatewayProcess:
    """A running `ocrmesh serve gateway` (or `serve xds`) subprocess and what its ready file said."""

    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: Path

    @property
    def address(self) -> str:
        return str(self.info["address"])

    @property
    def admin(self) -> str:
        return str(self.info["admin"])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_command(tmp: Path, name: str, argv: list[str], timeout_s: float = 90.0) -> GatewayProcess:
    """Run `python -m cli ARGV --ready-file F` and wait for the ready file."""
    proc, info, log_path = service_process.start_command(tmp, name, argv, timeout_s=timeout_s)
    return GatewayProcess(proc, info, log_path)


def start_gateway(tmp: Path, etcd: str, *args: str) -> GatewayProcess:
    argv = ["serve", "gateway", "--etcd", etcd, "--port", "0", "--admin-port", "0", "--xds-port", "0", *args]
    return start_command(tmp, "gateway", argv)


@contextlib.contextmanager
def running_gateway(tmp: Path, etcd: str, *args: str) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp, etcd, *args)
    try:
        yield gateway
    finally:
        stop(gateway.proc)


def admin_json(admin: str, path: str) -> Any:
    with urllib.request.urlopen(admin + path, timeout=5) as answer:
        return json.loads(answer.read())


def cluster_hosts(admin: str, cluster: str) -> dict[str, list[str]]:
    """Envoy's view (admin /clusters) of one cluster: "ip:port" -> health flags."""
    hosts: dict[str, list[str]] = {}
    for status in admin_json(admin, "/clusters?format=json").get("cluster_statuses", []):
        if status.get("name") != cluster:
            continue
        for host in status.get("host_statuses", []):
            sock = host["address"]["socket_address"]
            flags = [k for k, v in host.get("health_status", {}).items() if v is True]
            if host.get("health_status", {}).get("eds_health_status") not in (None, "HEALTHY"):
                flags.append(str(host["health_status"]["eds_health_status"]))
            hosts[f"{sock['address']}:{sock['port_value']}"] = flags
    return hosts


def healthy(admin: str, cluster: str) -> set[str]:
    return {addr for addr, flags in cluster_hosts(admin, cluster).items() if not flags}


async def healthy_in_envoy(admin: str, address: str) -> bool:
    """Whether Envoy's "ocr" cluster lists `address` as a healthy host."""
    return address in await asyncio.to_thread(healthy, admin, "ocr")


@pytest.fixture(name="stand_in_ocr")
async def stand_in_ocr_fixture(etcd_client: aetcd.Client) -> AsyncIterator[str]:
    """A registered "ocr" upstream serving only grpc.health.v1 (SERVING): an OCR call is UNIMPLEMENTED."""
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("ocrmesh.ocr.v1.OcrService", health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    address = f"127.0.0.1:{port}"
    await etcd_client.put(instance_key("ocr", "stand-in").encode(), json.dumps({"address": address}).encode())
    try:
        yield address
    finally:
        await server.stop(0)


async def login_through(target: str, user: str) -> str:
    """Register (if new) and log in over `target` (a gateway or an auth instance); the access token."""
    import grpc

    async with balancer.direct_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Register(auth_pb2.RegisterRequest(username=user, password=PASSWORD), timeout=20)
        answer = await stub.Login(auth_pb2.LoginRequest(username=user, password=PASSWORD), timeout=20)
    return str(answer.tokens.access_token)
