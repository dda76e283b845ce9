"""Gateway under failure: an OCR instance killed under load, and the control plane killed and restarted.

Run as `ocrmesh up` runs the mesh: every service with a mesh identity (mTLS, Envoy's upstream
certificates over SDS), etcd with TLS and RBAC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aetcd
import grpc
import pytest
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from etcd.launcher import EtcdProcess
from mesh.etcd_client import ClientFactory, close_quietly
from mesh.processes import free_port, kill_tree
from mesh.registry import instance_key
from mesh.workload_identity import WorkloadIdentity
from tests.corpus import CORPUS
from tests.integration.auth_fixtures import running_auth
from tests.integration.etcd_fixtures import eventually
from tests.integration.gateway_fixtures import (
    GatewayProcess,
    cluster_hosts,
    healthy,
    login_through,
    running_gateway,
    start_command,
)
from tests.integration.identity_fixtures import Identities, identities, secure_etcd
from tests.integration.ocr_fixtures import OcrProcess, start_ocr, stop

__all__ = ["identities", "secure_etcd"]  # pytest fixtures used below


@pytest.fixture(name="etcd")
def etcd_with_mtls(secure_etcd: EtcdProcess) -> EtcdProcess:
    """etcd serving TLS only, with RBAC."""
    return secure_etcd


@pytest.fixture(name="etcd_client")
async def admin_etcd_client(etcd: EtcdProcess, identities: Identities) -> AsyncIterator[aetcd.Client]:
    """An etcd client with the admin identity, for the test's own registry writes."""
    client = ClientFactory(etcd.endpoint, identity=WorkloadIdentity(identities.folder("admin"))).new()
    try:
        yield client
    finally:
        await close_quietly(client, 2.0)


def identity(identities: Identities, service: str, instance: str | None = None) -> tuple[str, str]:
    return ("--identity-dir", str(identities.folder(service, instance)))


LINE = (CORPUS / "real" / "cnocr_rand_cn1.png").read_bytes()
LINE_ONLY = ocr_pb2.RecognizeOptions(use_det=False, use_cls=False)


@contextlib.contextmanager
def ocr_pair(tmp: Path, etcd: str, identities: Identities) -> Iterator[list[OcrProcess]]:
    common = (
        "--workers",
        "1",
        "--etcd",
        etcd,
        "--lease-ttl-s",
        "3",
        "--debug-delay-ms",
        "100",
        "--queue-depth",
        "16",
    )
    started: list[OcrProcess] = []
    try:
        for name in ("gw-victim", "gw-survivor"):
            started.append(
                start_ocr(
                    tmp, *common, "--instance-id", name, "--require-auth", *identity(identities, "ocr", name)
                )
            )
        yield started
    finally:
        for svc in started:
            stop(svc.proc)


class Load:
    """Closed-loop Recognize callers through the gateway; records who served and every failure."""

    def __init__(self, target: str, token: str, callers: int, timeout_s: float = 20.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.metadata = [("authorization", f"Bearer {token}")]
        self.callers = callers
        self.served: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _caller(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:  # the gateway's outside listener
            stub = ocr_pb2_grpc.OcrServiceStub(channel)
            request = ocr_pb2.RecognizeRequest(image=LINE, filename="line.png", options=LINE_ONLY)
            while not self._stop.is_set():
                try:
                    answer = await stub.Recognize(request, metadata=self.metadata, timeout=self.timeout_s)
                except grpc.aio.AioRpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                    await asyncio.sleep(0.05)
                    continue
                self.served.append((time.monotonic(), answer.result.served_by.instance_id))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._caller()) for _ in range(self.callers)]

    async def finish(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def count(self) -> int:
        return len(self.served)


@contextlib.asynccontextmanager
async def gateway_over_a_pair(
    tmp: Path, etcd: EtcdProcess, identities: Identities, user: str
) -> AsyncIterator[tuple[OcrProcess, OcrProcess, GatewayProcess, str]]:
    """Auth, two OCR instances (victim, survivor) and a gateway, both instances healthy in Envoy;
    yields them with an access token for `user` obtained through the gateway."""
    db = f"sqlite+aiosqlite:///{tmp / 'auth.db'}"
    with (
        running_auth(tmp, "--etcd", etcd.endpoint, "--db", db, *identity(identities, "auth")),
        ocr_pair(tmp, etcd.endpoint, identities) as (victim, survivor),
        running_gateway(tmp, etcd.endpoint, *identity(identities, "gateway")) as gateway,
    ):
        await eventually(lambda: _healthy(gateway, {victim.address, survivor.address}), 30)
        yield victim, survivor, gateway, await login_through(gateway.address, user)


async def test_killed_instance_leaves_with_no_failed_request(
    tmp_path: Path, etcd: EtcdProcess, identities: Identities
) -> None:
    async with gateway_over_a_pair(tmp_path, etcd, identities, "chaos-user") as (victim, _, gateway, token):
        load = Load(gateway.address, token, callers=6)
        load.start()
        try:
            await eventually(lambda: _served_by_both(load), 60)
            kill_tree(victim.pid)
            killed_at = time.monotonic()
            # The victim leaves Envoy's endpoints once its lease expires; calls keep succeeding.
            await eventually(lambda: _gone(gateway, victim.address), 30)
            settled = load.count()
            await eventually(lambda: _at_least(load.count, settled + 10), 60)
        finally:
            await load.finish()
    assert load.failures == [], load.failures[:5]
    after = Counter(who for at, who in load.served if at > killed_at + 1.0)
    assert after["gw-survivor"] > 0 and after["gw-victim"] == 0, after


async def test_calls_on_a_frozen_instance_are_retried_elsewhere_within_their_deadline(
    tmp_path: Path, etcd: EtcdProcess, identities: Identities
) -> None:
    """SIGSTOP leaves connections open and silent: without HTTP/2 keepalive on its upstream
    connections Envoy would wait on the calls it sent there until their 8 s deadline."""
    async with gateway_over_a_pair(tmp_path, etcd, identities, "frozen-user") as (victim, _, gateway, token):
        load = Load(gateway.address, token, callers=6, timeout_s=8.0)
        load.start()
        try:
            await eventually(lambda: _served_by_both(load), 60)
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                frozen = load.count()
                await asyncio.sleep(12)  # longer than a call's deadline: a hung call would fail
                await eventually(lambda: _at_least(load.count, frozen + 10), 60)
            finally:
                os.kill(victim.pid, signal.SIGCONT)
        finally:
            await load.finish()
    assert load.failures == [], load.failures[:5]


async def test_control_plane_restart_does_not_interrupt_traffic(
    tmp_path: Path, etcd: EtcdProcess, identities: Identities, etcd_client: aetcd.Client
) -> None:
    xds_port = free_port()
    xds_args = [
        "serve",
        "xds",
        "--etcd",
        etcd.endpoint,
        "--port",
        str(xds_port),
        *identity(identities, "xds"),
    ]
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    xds = start_command(tmp_path, "xds", xds_args)
    try:
        with (
            running_auth(tmp_path, "--etcd", etcd.endpoint, "--db", db, *identity(identities, "auth")),
            ocr_pair(tmp_path, etcd.endpoint, identities) as pair,
            running_gateway(
                tmp_path,
                etcd.endpoint,
                "--xds",
                f"127.0.0.1:{xds_port}",
                *identity(identities, "gateway"),
            ) as gateway,
        ):
            await eventually(lambda: _healthy(gateway, {svc.address for svc in pair}), 30)
            token = await login_through(gateway.address, "restart-user")
            load = Load(gateway.address, token, callers=4)
            load.start()
            try:
                await eventually(lambda: _at_least(load.count, 10), 60)
                # The control plane dies: Envoy keeps its config and keeps serving.
                kill_tree(xds.proc.pid)
                xds.proc.wait(10)
                await eventually(lambda: _connected(gateway, False), 30)
                during = load.count()
                await eventually(lambda: _at_least(load.count, during + 10), 60)
                # A new control plane on the same port: Envoy reconnects and takes new registrations.
                xds = await asyncio.to_thread(start_command, tmp_path, "xds", xds_args)
                await eventually(lambda: _connected(gateway, True), 60)
                port = free_port()
                await etcd_client.put(
                    instance_key("ocr", "after-restart").encode(),
                    json.dumps({"address": f"127.0.0.1:{port}"}).encode(),
                )
                await eventually(lambda: _listed(gateway, f"127.0.0.1:{port}"), 20)
                await etcd_client.delete(instance_key("ocr", "after-restart").encode())
                after = load.count()
                await eventually(lambda: _at_least(load.count, after + 10), 60)
            finally:
                await load.finish()
        assert load.failures == [], load.failures[:5]
    finally:
        stop(xds.proc)


async def _healthy(gateway: GatewayProcess, addresses: set[str]) -> bool:
    return addresses <= healthy(gateway.admin, "ocr")


async def _gone(gateway: GatewayProcess, address: str) -> bool:
    return address not in cluster_hosts(gateway.admin, "ocr")


async def _listed(gateway: GatewayProcess, address: str) -> bool:
    return address in cluster_hosts(gateway.admin, "ocr")


async def _served_by_both(load: Load) -> bool:
    return len({who for _, who in load.served}) == 2


async def _at_least(get: object, n: int) -> bool:
    return bool(get() >= n)  # type: ignore[operator]


def _connected_state(admin: str) -> str:
    with urllib.request.urlopen(admin + "/stats?filter=control_plane.connected_state", timeout=5) as answer:
        return str(answer.read().decode())


async def _connected(gateway: GatewayProcess, want: bool) -> bool:
    """Envoy's own view of its ADS stream (stat control_plane.connected_state)."""
    text = await asyncio.to_thread(_connected_state, gateway.admin)
    return f"control_plane.connected_state: {int(want)}" in text
