"""The gateway with mesh identities: Envoy reaches OCR and auth over mTLS with its certificate from
our control plane (SDS over ADS), a registry entry whose certificate names another service or
comes from another CA gets no traffic, a rotation of the gateway's identity keeps calls working,
and a JWKS written to etcd by anyone but an auth identity is ignored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from etcd.launcher import EtcdProcess
from gateway import resources as rs
from gateway.control_plane import ControlPlane, XdsService
from gateway.mesh_tls import CERT_SECRET
from mesh import identity_files, mesh_transport
from mesh.certificate_authority import CertificateAuthority
from mesh.etcd_client import ClientFactory, close_quietly
from mesh.jwks_signature import sign_jwks
from mesh.jwks_source import JWKS_KEY
from mesh.registry import instance_key
from mesh.workload_identity import WorkloadIdentity
from tests.corpus import CORPUS
from tests.integration.auth_fixtures import running_auth
from tests.integration.etcd_fixtures import eventually
from tests.integration.gateway_fixtures import (
    admin_json,
    cluster_hosts,
    login_through,
    running_gateway,
    start_command,
)
from tests.integration.ocr_fixtures import ROOT, running_ocr, stop
from tests.integration.test_gateway_jwks import Key

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
TRUST_DOMAIN = "ocrmesh.test"


def identity_dir(tmp: Path, ca: CertificateAuthority, service: str, instance: str, *hosts: str) -> Path:
    """A fresh identity folder for `service` holding a leaf of `ca`."""
    folder = tmp / "identities" / f"{service}-{instance}-{id(ca)}"
    identity_files.write(folder, ca.issue(service, instance, hosts=hosts), ca.cert_pem)
    return folder


@dataclass
class SecureEtcd:
    """etcd as `ocrmesh up` runs it with identities: TLS, mesh client certificates, RBAC; the test
    writes as `admin` (etcd's root role), as an attacker holding that credential would."""

    etcd: EtcdProcess
    ca: CertificateAuthority
    admin: aetcd.Client


@pytest.fixture(name="secure_etcd")
async def secure_etcd_fixture(tmp_path: Path) -> AsyncIterator[SecureEtcd]:
    ca = CertificateAuthority.create(TRUST_DOMAIN)
    admin_dir = identity_dir(tmp_path, ca, "admin", "tester")
    etcd = EtcdProcess(
        tmp_path / "etcd",
        heartbeat_ms=10,
        election_timeout_ms=100,
        identity_dir=identity_dir(tmp_path, ca, "etcd", "etcd-1", "127.0.0.1"),
        admin_identity_dir=admin_dir,
    )
    await etcd.start()
    admin = ClientFactory(etcd.endpoint, 2.0, identity=WorkloadIdentity(admin_dir)).new()
    try:
        yield SecureEtcd(etcd, ca, admin)
    finally:
        await close_quietly(admin, 2.0)
        await etcd.stop()


class Impostor:
    """A TLS gRPC server answering health checks SERVING and counting every call that reaches it."""

    def __init__(self, ca: CertificateAuthority, service: str, instance: str) -> None:
        self.ca = ca
        self.leaf = ca.issue(service, instance)
        self.calls = 0
        self.server = grpc.aio.server(interceptors=[_Counter(self)])
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        credentials = grpc.ssl_server_credentials(
            [(self.leaf.key_pem, self.leaf.cert_pem)], root_certificates=ca.cert_pem, require_client_auth=True
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("ocrmesh.ocr.v1.OcrService", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def answers_its_own_clients(self, tmp: Path, service: str) -> bool:
        """A client of the impostor's own CA expecting its service does reach it (the counter works)."""
        client = WorkloadIdentity(identity_dir(tmp, self.ca, "cli", "probe"))
        before = self.calls
        async with grpc.aio.secure_channel(
            self.address, client.channel_credentials(), options=client.expected_peer_options(service)
        ) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        self.calls = before  # that call was ours, not the gateway's
        return True


class _Counter(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, owner: Impostor) -> None:
        self.owner = owner

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.owner.calls += 1
        return await continuation(handler_call_details)


async def recognize(address: str, token: str) -> ocr_pb2.RecognizeResponse:
    async with grpc.aio.insecure_channel(address) as channel:  # the gateway's edge: plaintext here
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        request = ocr_pb2.RecognizeRequest(image=PHOTO.read_bytes(), filename=PHOTO.name)
        reply: ocr_pb2.RecognizeResponse = await stub.Recognize(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=120
        )
        return reply


async def info_code(address: str, token: str, identity: WorkloadIdentity | None = None) -> grpc.StatusCode:
    """The status of GetInfo with `token` at `address`: the gateway (plaintext edge) or, with
    `identity`, an OCR instance dialled over mTLS."""
    if identity is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(
            address, identity.channel_credentials(), options=identity.expected_peer_options("ocr")
        )
    async with channel:
        try:
            await ocr_pb2_grpc.OcrServiceStub(channel).GetInfo(
                ocr_pb2.GetInfoRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def cert_serials(admin: str) -> set[int]:
    """Serial numbers of every certificate Envoy holds (admin /certs)."""
    found: set[int] = set()
    for entry in admin_json(admin, "/certs").get("certificates", []):
        for cert in entry.get("cert_chain", []):
            found.add(int(cert["serial_number"], 16))
    return found


async def test_gateway_reaches_the_mesh_over_mtls_and_only_trusts_what_the_ca_names(
    tmp_path: Path, secure_etcd: SecureEtcd
) -> None:
    etcd, etcd_client, ca = secure_etcd.etcd, secure_etcd.admin, secure_etcd.ca
    other_ca = CertificateAuthority.create(TRUST_DOMAIN)  # same name, another key: not our CA
    gateway_dir = identity_dir(tmp_path, ca, "gateway", "gw-1")
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    with (
        running_auth(
            tmp_path,
            "--etcd",
            etcd.endpoint,
            "--db",
            db,
            "--identity-dir",
            str(identity_dir(tmp_path, ca, "auth", "a1")),
        ),
        running_ocr(
            tmp_path,
            *("--workers", "1", "--etcd", etcd.endpoint, "--require-auth", "--instance-id", "ocr-mtls-1"),
            *("--identity-dir", str(identity_dir(tmp_path, ca, "ocr", "ocr-mtls-1"))),
        ) as ocr,
        running_gateway(tmp_path, etcd.endpoint, "--identity-dir", str(gateway_dir)) as gateway,
    ):
        await eventually(lambda: _healthy(gateway.admin, "ocr", ocr.address), 30)
        token = await login_through(gateway.address, "mtls-user")
        answer = await recognize(gateway.address, token)
        assert answer.result.text.strip() and answer.result.served_by.instance_id == "ocr-mtls-1"

        # Registry entries for "ocr" whose servers hold an auth certificate of our CA, or an ocr
        # certificate of another CA: Envoy's handshake fails, so neither gets a single call.
        impostors = [Impostor(ca, "auth", "fake-ocr"), Impostor(other_ca, "ocr", "fake-ocr")]
        for number, impostor in enumerate(impostors):
            await impostor.start()
            assert await impostor.answers_its_own_clients(tmp_path, "auth" if number == 0 else "ocr")
            key = instance_key("ocr", f"impostor-{number}")
            await etcd_client.put(key.encode(), json.dumps({"address": impostor.address}).encode())
        try:
            await eventually(lambda: _listed(gateway.admin, "ocr", [i.address for i in impostors]), 20)
            await asyncio.sleep(5)  # a few active health-check rounds (every 2 s)
            for _ in range(4):
                assert (await recognize(gateway.address, token)).result.served_by.instance_id == "ocr-mtls-1"
            assert [i.calls for i in impostors] == [0, 0]
            # ... because Envoy refused their certificates: one names the wrong service, one is
            # signed by a stranger.
            ssl = await asyncio.to_thread(_ssl_stats, gateway.admin, "ocr")
            assert ssl.get("fail_verify_san", 0) >= 1 and ssl.get("fail_verify_error", 0) >= 1, ssl
            hosts = await asyncio.to_thread(cluster_hosts, gateway.admin, "ocr")
            assert all(hosts[i.address] for i in impostors), hosts  # flagged unhealthy
            # Two of three hosts unhealthy, yet no panic routing over all three (which once let
            # every try of a call land on impostors): calls went to the healthy host alone.
            assert await asyncio.to_thread(_panics, gateway.admin, "ocr") == 0
        finally:
            for impostor in impostors:
                await impostor.server.stop(0)

        # Rotation: a new gateway leaf in its folder reaches Envoy over SDS; calls keep working.
        old_serial = _serial(gateway_dir)
        assert old_serial in await asyncio.to_thread(cert_serials, gateway.admin)
        identity_files.write(gateway_dir, ca.issue("gateway", "gw-1"), ca.cert_pem)
        new_serial = _serial(gateway_dir)
        await eventually(lambda: _holds_only(gateway.admin, new_serial, old_serial), 20)
        for _ in range(2):
            assert (await recognize(gateway.address, token)).result.served_by.instance_id == "ocr-mtls-1"

        # A JWKS in etcd that no auth identity signed (a stolen etcd credential) is ignored by
        # Envoy and by OCR: the attacker's tokens stay UNAUTHENTICATED, the real ones work.
        cli = WorkloadIdentity(identity_dir(tmp_path, ca, "cli", "tester"))
        attacker = Key("attacker")
        forged = json.dumps({"keys": [attacker.jwk]}).encode()
        admin_leaf = WorkloadIdentity(identity_dir(tmp_path, ca, "admin", "thief")).current
        for bad in (forged, sign_jwks(forged, admin_leaf)):
            await etcd_client.put(JWKS_KEY.encode(), bad)
            await asyncio.sleep(2)  # several JWKS polls (every 0.5 s)
            assert await info_code(gateway.address, attacker.token()) == grpc.StatusCode.UNAUTHENTICATED
            assert await info_code(ocr.address, attacker.token(), cli) == grpc.StatusCode.UNAUTHENTICATED
            assert await info_code(gateway.address, token) == grpc.StatusCode.OK
            assert await info_code(ocr.address, token, cli) == grpc.StatusCode.OK
    assert "JWKS" in ocr.log_text() and "not signed by an auth identity" in ocr.log_text()


def _cluster_stats(admin: str, cluster: str, pattern: str) -> dict[str, int]:
    """Envoy's counters of one cluster whose name after `cluster.<name>.` matches the regex
    `pattern`, by their last name part."""
    stats = admin_json(admin, f"/stats?format=json&filter=^cluster\\.{cluster}\\.{pattern}")["stats"]
    return {s["name"].rsplit(".", 1)[-1]: int(s["value"]) for s in stats if "value" in s}


def _ssl_stats(admin: str, cluster: str) -> dict[str, int]:
    """Envoy's TLS counters of one cluster's upstream connections."""
    return _cluster_stats(admin, cluster, "ssl\\.")


def _panics(admin: str, cluster: str) -> int:
    """How often Envoy balanced over unhealthy hosts because too few were healthy (panic mode)."""
    return _cluster_stats(admin, cluster, "lb_healthy_panic$").get("lb_healthy_panic", 0)


def _serial(folder: Path) -> int:
    return x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes()).serial_number


async def _healthy(admin: str, cluster: str, address: str) -> bool:
    hosts = await asyncio.to_thread(cluster_hosts, admin, cluster)
    return address in hosts and not hosts[address]


async def _listed(admin: str, cluster: str, addresses: list[str]) -> bool:
    hosts: dict[str, Any] = await asyncio.to_thread(cluster_hosts, admin, cluster)
    return all(a in hosts for a in addresses)


async def _holds_only(admin: str, new: int, old: int) -> bool:
    serials = await asyncio.to_thread(cert_serials, admin)
    return new in serials and old not in serials


PROXYLESS_CLIENT = """
import asyncio, json, sys
from pathlib import Path
from grpc_health.v1 import health_pb2, health_pb2_grpc
from gateway.proxyless import xds_channel
from mesh import mesh_transport
from mesh.workload_identity import WorkloadIdentity

async def main() -> None:
    mesh_transport.configure(WorkloadIdentity(Path(sys.argv[2])))
    served = []
    async with xds_channel("ocr", sys.argv[1]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(int(sys.argv[3])):
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=20, wait_for_ready=True)
            served.append(reply.status)
    print(json.dumps(served))

asyncio.run(main())
"""


async def test_proxyless_clients_and_the_xds_server_speak_mtls_and_secrets_go_to_the_gateway_only(
    tmp_path: Path, secure_etcd: SecureEtcd
) -> None:
    ca = secure_etcd.ca
    xds_identity = WorkloadIdentity(identity_dir(tmp_path, ca, "xds", "xds-1", "127.0.0.1"))
    genuine, impostor = Impostor(ca, "ocr", "real-ocr"), Impostor(ca, "auth", "fake-ocr")
    before = mesh_transport.identity()
    mesh_transport.configure(xds_identity)  # the xDS server binds with the process's identity
    try:
        control_plane = ControlPlane(secure_etcd.etcd.endpoint, identity=xds_identity)
        xds = XdsService(control_plane, "127.0.0.1", 0)
        await xds.start()
    finally:
        mesh_transport.configure(before)
    try:
        for number, server in enumerate((genuine, impostor)):
            await server.start()
            key = instance_key("ocr", f"px-{number}").encode()
            await secure_etcd.admin.put(key, json.dumps({"address": server.address}).encode())
        # A proxyless client (its own process: gRPC reads its xDS bootstrap once) with a cli
        # identity: mTLS to the control plane and to the instances, the impostor never reached.
        argv = [sys.executable, "-c", PROXYLESS_CLIENT, xds.address]
        argv += [str(identity_dir(tmp_path, ca, "cli", "px-client")), "6"]
        done = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert json.loads(done.stdout) == [health_pb2.HealthCheckResponse.SERVING] * 6
        assert genuine.calls == 6 and impostor.calls == 0

        # Secrets: a cli identity may read config over ADS but is refused Secret resources; an ocr
        # identity may not open an ADS stream at all.
        secret_request = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="thief", cluster="ocrmesh-gateway"),
            type_url=rs.SECRET,
            resource_names=[CERT_SECRET],
        )
        for service, expected in (
            ("cli", grpc.StatusCode.PERMISSION_DENIED),
            ("ocr", grpc.StatusCode.PERMISSION_DENIED),
        ):
            caller = WorkloadIdentity(identity_dir(tmp_path, ca, service, "thief"))
            async with grpc.aio.secure_channel(
                xds.address, caller.channel_credentials(), options=caller.expected_peer_options("xds")
            ) as channel:
                stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
                    timeout=10
                )
                # The server may refuse before the request is even sent: then the write fails
                # (grpc says INTERNAL for the write), and the call's status is still the refusal.
                with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                    await stream.write(secret_request)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for _ in stream:
                        raise AssertionError(f"{service} was sent a Secret")
                assert await stream.code() == expected, (service, await stream.details())
    finally:
        for server in (genuine, impostor):
            await server.server.stop(0)
        await xds.stop()


async def test_incremental_xds_delivers_the_secrets_too(tmp_path: Path, secure_etcd: SecureEtcd) -> None:
    """With --xds-delta Envoy takes its Secrets over delta ADS: its health checks, over mTLS,
    reach an instance whose certificate names `ocr` and find it healthy."""
    ca = secure_etcd.ca
    instance = Impostor(ca, "ocr", "delta-ocr")
    await instance.start()
    try:
        key = instance_key("ocr", "delta-ocr").encode()
        await secure_etcd.admin.put(key, json.dumps({"address": instance.address}).encode())
        folder = identity_dir(tmp_path, ca, "gateway", "gw-delta")
        args = ("--identity-dir", str(folder), "--xds-delta")
        with running_gateway(tmp_path, secure_etcd.etcd.endpoint, *args) as gateway:
            await eventually(lambda: _healthy(gateway.admin, "ocr", instance.address), 20)
            assert instance.calls > 0
            assert _serial(folder) in await asyncio.to_thread(cert_serials, gateway.admin)
    finally:
        await instance.server.stop(0)


async def test_an_external_control_plane_names_the_gateways_files_and_envoy_follows_their_rotation(
    tmp_path: Path, secure_etcd: SecureEtcd
) -> None:
    """`serve xds` (an xds identity) does not hold the gateway's key: the Secrets it sends name the
    gateway's identity files, which Envoy reads itself and reads again when the folder rotates."""
    ca = secure_etcd.ca
    instance = Impostor(ca, "ocr", "external-ocr")
    await instance.start()
    xds_dir = identity_dir(tmp_path, ca, "xds", "xds-1", "127.0.0.1")
    argv = [
        "serve",
        "xds",
        "--etcd",
        secure_etcd.etcd.endpoint,
        "--port",
        "0",
        "--identity-dir",
        str(xds_dir),
    ]
    xds = await asyncio.to_thread(start_command, tmp_path, "xds", argv)
    try:
        key = instance_key("ocr", "external-ocr").encode()
        await secure_etcd.admin.put(key, json.dumps({"address": instance.address}).encode())
        folder = identity_dir(tmp_path, ca, "gateway", "gw-external")
        args = ("--identity-dir", str(folder), "--xds", str(xds.info["xds"]))
        with running_gateway(tmp_path, secure_etcd.etcd.endpoint, *args) as gateway:
            await eventually(lambda: _healthy(gateway.admin, "ocr", instance.address), 20)
            old_serial = _serial(folder)
            assert old_serial in await asyncio.to_thread(cert_serials, gateway.admin)
            identity_files.write(folder, ca.issue("gateway", "gw-external"), ca.cert_pem)
            await eventually(lambda: _holds_only(gateway.admin, _serial(folder), old_serial), 20)
            assert (await _healthy(gateway.admin, "ocr", instance.address)) and instance.calls > 0
    finally:
        stop(xds.proc)
        await instance.server.stop(0)
