"""The attacks of issue 16 against a mesh run as `ocrmesh up` runs it (LocalMesh, mTLS on): each fails.

An attacker on the same host can reach every port and, in the worst case, write the registry (an
etcd credential stolen; simulated here by writing with the admin role). None of that gets them a
call, a password, an image or a token.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from deploy.supervisor import LocalMesh, MeshPorts
from mesh import balancer, errors
from mesh.certificate_authority import CertificateAuthority
from mesh.credentials import bearer
from mesh.etcd_client import ClientFactory
from mesh.jwks_signature import is_signed
from mesh.mesh_client import MeshClient
from mesh.registry import Instance, instance_key
from mesh.session_revocations import REVOKED_SESSIONS_KEY
from mesh.workload_identity import WorkloadIdentity
from tests.corpus import CORPUS
from tests.integration.etcd_fixtures import eventually
from tests.integration.identity_fixtures import acting_as, impostor, issue

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
PASSWORD = "correct horse battery"


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[LocalMesh]:
    local = LocalMesh(
        ocr=1,
        auth=1,
        gateway=False,
        bff=True,
        data_dir=tmp_path / "mesh",
        ports=MeshPorts.ephemeral(),
        secure=True,
    )
    async with local:
        yield local


async def _health(address: str, service: str) -> grpc.StatusCode:
    async with balancer.direct_channel(address, service) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.timeout(400)
async def test_attacks_on_a_default_mesh_fail(
    mesh: LocalMesh, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ocr_address, auth_address = mesh.addresses("ocr")[0], mesh.addresses("auth")[0]

    # A plaintext client, and one with a certificate from another CA (same trust domain name),
    # are refused in the handshake by OCR and auth; a mesh client gets in.
    stranger_ca = CertificateAuthority.create(mesh.trust_domain)
    stranger = issue(stranger_ca, "cli", "mallory", tmp_path / "stranger")
    for folder in (None, stranger):
        with acting_as(folder):
            assert await _health(ocr_address, "ocr") is grpc.StatusCode.UNAVAILABLE
            assert await _health(auth_address, "auth") is grpc.StatusCode.UNAVAILABLE
    with acting_as(mesh.identity_dir("cli")):
        assert await _health(ocr_address, "ocr") is grpc.StatusCode.OK
    # Nor does a TLS client that presents no certificate, whatever it is willing to trust.
    async with grpc.aio.secure_channel(
        ocr_address,
        grpc.ssl_channel_credentials(real_ca_pem := (mesh.data_dir / "ca" / "ca.pem").read_bytes()),
        options=[("grpc.ssl_target_name_override", f"ocr.{mesh.trust_domain}")],
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as no_certificate:
            await ocr_pb2_grpc.OcrServiceStub(channel).GetInfo(ocr_pb2.GetInfoRequest(), timeout=5)
        assert no_certificate.value.code() is grpc.StatusCode.UNAVAILABLE
    assert real_ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")

    # A workload may call only what the caller policy allows it: OCR's identity may not log in.
    with acting_as(mesh.identity_dir("ocr-1")):
        async with balancer.direct_channel(auth_address, "auth") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await auth_pb2_grpc.AuthServiceStub(channel).Login(
                    auth_pb2.LoginRequest(username="x", password=PASSWORD), timeout=10
                )
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert errors.error_reason(errors.from_call_error(refused.value)) == "CALLER_NOT_ALLOWED"

    # Forged registry entries (full etcd compromise): a fake OCR presenting the real CA's `auth`
    # leaf, one with a leaf of another CA, and a fake auth presenting the real CA's `ocr` leaf,
    # all weighted far above the real instances.
    real_ca = CertificateAuthority.load(mesh.data_dir / "ca")
    fakes = [
        ("ocr", issue(real_ca, "auth", "stolen-auth", tmp_path / "fake-ocr-1")),
        ("ocr", issue(stranger_ca, "ocr", "forged", tmp_path / "fake-ocr-2")),
        ("auth", issue(real_ca, "ocr", "stolen-ocr", tmp_path / "fake-auth")),
    ]
    servers, counters, impostors = [], [], []
    attacker = ClientFactory(mesh.etcd.endpoint, identity=WorkloadIdentity(mesh.identity_dir("admin"))).new()
    try:
        for service, folder in fakes:
            server, port, counter = await impostor(folder)
            servers.append(server)
            counters.append(counter)
            fake = Instance(
                service=service, id=f"evil-{len(servers)}", address=f"127.0.0.1:{port}", weight=10000
            )
            impostors.append(fake)
            await attacker.put(instance_key(service, fake.id).encode(), fake.to_json().encode())
        await asyncio.sleep(1.0)

        # Through the mesh client, as a person's command would call: every call answered by the
        # real instances, none reaching an impostor.
        with acting_as(mesh.identity_dir("cli")):
            async with MeshClient.from_etcd(mesh.etcd.endpoint, "auth") as auth:
                await auth.unary(
                    "/ocrmesh.auth.v1.AuthService/Register",
                    auth_pb2.RegisterRequest(username="alice", password=PASSWORD),
                    auth_pb2.RegisterResponse,
                    timeout=20,
                )
                login = await auth.unary(
                    "/ocrmesh.auth.v1.AuthService/Login",
                    auth_pb2.LoginRequest(username="alice", password=PASSWORD),
                    auth_pb2.LoginResponse,
                    timeout=20,
                )
            async with MeshClient.from_etcd(mesh.etcd.endpoint, "ocr") as ocr:
                assert await ocr.wait_for_endpoints(3, 10)  # the real instance and both impostors
                for _ in range(10):
                    reply = await ocr.unary(
                        "/ocrmesh.ocr.v1.OcrService/Recognize",
                        ocr_pb2.RecognizeRequest(image=PHOTO.read_bytes(), filename=PHOTO.name),
                        ocr_pb2.RecognizeResponse,
                        timeout=60,
                        metadata=bearer(login.tokens.access_token),
                    )
                    assert "正品促销" in reply.result.text

        # Through the BFF: a person's password and image go to the real services only.
        url = mesh.bff_url
        assert url is not None
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            client.headers["X-CSRF-Token"] = (await client.get("/api/csrf")).json()["csrf"]
            person = {"username": f"zt-{uuid.uuid4().hex[:8]}", "password": PASSWORD}
            assert (await client.post("/api/register", json=person)).status_code == 201
            for _ in range(3):
                assert (await client.post("/api/login", json=person)).status_code == 200
                got = await client.post(
                    "/api/ocr", files={"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")}
                )
                assert got.status_code == 200, got.text
        # Left with nothing but the impostors, a client fails the call and says why.
        with acting_as(mesh.identity_dir("cli")), caplog.at_level(logging.WARNING, "mesh.mesh_client"):
            async with MeshClient("ocr", instances=impostors[:2]) as only_fakes:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await only_fakes.unary(
                        "/ocrmesh.ocr.v1.OcrService/GetInfo",
                        ocr_pb2.GetInfoRequest(),
                        ocr_pb2.GetInfoResponse,
                        timeout=10,
                    )
                assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "did not prove it is ocr" in caplog.text
        assert [counter.calls for counter in counters] == [[], [], []]
    finally:
        for fake in impostors:
            await attacker.delete(instance_key(fake.service, fake.id).encode())
        await attacker.close()
        for server in servers:
            await server.stop(None)

    # A logout still ends the session's access tokens at OCR, through revocations that only an
    # auth identity's signature makes etcd's value count.
    with acting_as(mesh.identity_dir("cli")):
        async with MeshClient.from_etcd(mesh.etcd.endpoint, "auth") as auth:
            await auth.unary(
                "/ocrmesh.auth.v1.AuthService/Logout",
                auth_pb2.LogoutRequest(refresh_token=login.tokens.refresh_token),
                auth_pb2.LogoutResponse,
                timeout=20,
            )
        reader = ClientFactory(mesh.etcd.endpoint).new()
        try:
            assert is_signed((await reader.get(REVOKED_SESSIONS_KEY.encode())).value)
        finally:
            await reader.close()
        async with balancer.direct_channel(ocr_address, "ocr") as channel:
            stub = ocr_pb2_grpc.OcrServiceStub(channel)

            async def revoked() -> bool:
                try:
                    await stub.GetInfo(
                        ocr_pb2.GetInfoRequest(), metadata=bearer(login.tokens.access_token), timeout=5
                    )
                except grpc.aio.AioRpcError as exc:
                    return errors.error_reason(errors.from_call_error(exc)) == "TOKEN_REVOKED"
                return False

            await eventually(revoked, 5, interval=0.2)

    # The client address auth throttles on: x-forwarded-for is believed from a gateway or BFF
    # certificate only, whatever address the caller has (all of them are 127.0.0.1 here).
    assert await _failed_logins_with_forged_addresses(mesh, "bff", 22) == {"BAD_CREDENTIALS": 22}
    assert await _failed_logins_with_forged_addresses(mesh, "cli", 22) == {
        "BAD_CREDENTIALS": 20,
        "LOGIN_THROTTLED": 2,
    }


async def _failed_logins_with_forged_addresses(mesh: LocalMesh, caller: str, count: int) -> dict[str, int]:
    """`count` failed logins as `caller`, each for another name and claiming another client address."""
    reasons: dict[str, int] = {}
    with acting_as(mesh.identity_dir(caller)):
        async with balancer.direct_channel(mesh.addresses("auth")[0], "auth") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            for i in range(count):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.Login(
                        auth_pb2.LoginRequest(username=f"{caller}-nobody-{i}", password="wrong password!"),
                        metadata=[("x-forwarded-for", f"198.51.100.{i + 1}")],
                        timeout=20,
                    )
                reason = errors.error_reason(errors.from_call_error(failed.value))
                reasons[reason] = reasons.get(reason, 0) + 1
    return reasons
