"""Certificates rotating under load: every workload's 60 s leaf is renewed at least three times
while clients keep 8 calls in flight through the mesh client and 8 through the gateway, and no
call fails (servers pick the new certificate per handshake, clients open new channels with theirs,
Envoy takes its own over SDS)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path

import grpc
import pytest
from ocrmesh.auth.v1 import auth_pb2
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from deploy.supervisor import LocalMesh, MeshPorts
from mesh.credentials import bearer
from mesh.mesh_client import MeshClient
from tests.corpus import CORPUS
from tests.integration.etcd_fixtures import eventually
from tests.integration.identity_fixtures import acting_as

# A soak: three 60 s leaf rotations under load (~110 s). Rotation itself stays in make test
# (test_gateway_mtls, test_etcd_rbac).
pytestmark = pytest.mark.slow

IMAGE = CORPUS / "real" / "cnocr_multi-line_en_black.png"
LIFETIME = dt.timedelta(seconds=60)
ROTATIONS = 3
CONCURRENCY = 8


async def _closed_loop(call: object, stop: asyncio.Event, codes: Counter[str]) -> None:
    while not stop.is_set():
        try:
            await call()  # type: ignore[operator]
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1


@pytest.mark.timeout(500)
async def test_three_rotations_under_load_fail_no_call(tmp_path: Path) -> None:
    mesh = LocalMesh(
        ocr=1,
        auth=1,
        gateway=True,
        bff=False,
        data_dir=tmp_path / "mesh",
        ports=MeshPorts.ephemeral(),
        secure=True,
        cert_lifetime=LIFETIME,
    )
    request = ocr_pb2.RecognizeRequest(image=IMAGE.read_bytes(), filename=IMAGE.name)
    async with mesh:
        assert mesh.issuer is not None and mesh.gateway_address is not None
        watched = mesh.issuer.identities[mesh.identity_dir("ocr-1")]
        with acting_as(mesh.identity_dir("cli")):
            async with MeshClient.from_etcd(mesh.etcd.endpoint, "auth") as auth:
                await auth.unary(
                    "/ocrmesh.auth.v1.AuthService/Register",
                    auth_pb2.RegisterRequest(username="rotor", password="correct horse battery"),
                    auth_pb2.RegisterResponse,
                    timeout=20,
                )
                login = await auth.unary(
                    "/ocrmesh.auth.v1.AuthService/Login",
                    auth_pb2.LoginRequest(username="rotor", password="correct horse battery"),
                    auth_pb2.LoginResponse,
                    timeout=20,
                )
            token = bearer(login.tokens.access_token)
            direct: Counter[str] = Counter()
            gateway: Counter[str] = Counter()
            stop = asyncio.Event()
            async with (
                MeshClient.from_etcd(mesh.etcd.endpoint, "ocr") as ocr,
                grpc.aio.insecure_channel(mesh.gateway_address) as outside,
            ):
                via_gateway = ocr_pb2_grpc.OcrServiceStub(outside)

                async def through_mesh() -> None:
                    await ocr.unary(
                        "/ocrmesh.ocr.v1.OcrService/Recognize",
                        request,
                        ocr_pb2.RecognizeResponse,
                        timeout=120,
                        metadata=token,
                    )

                async def through_gateway() -> None:
                    await via_gateway.Recognize(request, timeout=120, metadata=token)

                first = watched.issued
                loops = [
                    asyncio.create_task(_closed_loop(through_mesh, stop, direct)) for _ in range(CONCURRENCY)
                ]
                loops += [
                    asyncio.create_task(_closed_loop(through_gateway, stop, gateway))
                    for _ in range(CONCURRENCY)
                ]

                async def rotated_enough() -> bool:
                    return watched.issued - first >= ROTATIONS

                await eventually(rotated_enough, 300, interval=1)
                await asyncio.sleep(3)  # calls on the newest certificates too
                stop.set()
                await asyncio.gather(*loops)
    rotations = watched.issued - first
    print(f"rotations {rotations}; mesh client {dict(direct)}; gateway {dict(gateway)}")
    assert rotations >= ROTATIONS
    assert set(direct) == {"OK"} and set(gateway) == {"OK"}, (direct, gateway)
    assert direct["OK"] > 0 and gateway["OK"] > 0
