"""The gateway end to end: real etcd, auth, OCR and Envoy configured by our control plane."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aetcd
import grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from etcd.launcher import EtcdProcess
from mesh import balancer
from mesh.processes import free_port
from mesh.registry import instance_key
from mesh.status import collect
from tests.corpus import CORPUS
from tests.integration.auth_fixtures import running_auth
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.gateway_fixtures import admin_json, cluster_hosts, login_through, running_gateway
from tests.integration.ocr_fixtures import running_ocr
from tests.pdf_samples import scan_pdf

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"


async def test_ocr_through_the_gateway_needs_a_token_and_follows_the_registry(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    with (
        running_auth(tmp_path, "--etcd", etcd.endpoint, "--db", db),
        running_ocr(
            tmp_path, "--workers", "1", "--etcd", etcd.endpoint, "--require-auth", "--instance-id", "ocr-gw-1"
        ) as ocr,
        running_gateway(tmp_path, etcd.endpoint) as gateway,
    ):
        # The ready file promises a listener that took its config; the OCR instance is in it.
        assert set(gateway.info) >= {"address", "admin", "xds"}
        await eventually(lambda: _has(gateway.admin, "ocr", ocr.address), 20)

        # Register and Login pass the gateway without a token.
        token = await login_through(gateway.address, "gateway-user")
        async with balancer.direct_channel(gateway.address) as channel:
            stub = ocr_pb2_grpc.OcrServiceStub(channel)
            request = ocr_pb2.RecognizeRequest(image=PHOTO.read_bytes(), filename=PHOTO.name)
            answer = await stub.Recognize(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=120
            )
            assert answer.result.text.strip() and answer.result.served_by.instance_id == "ocr-gw-1"
            # A PDF through the gateway comes back page by page, in order.
            pdf = scan_pdf("rapidocr_text_rec.jpg", "rapidocr_short.png")
            paged = await stub.Recognize(
                ocr_pb2.RecognizeRequest(image=pdf, filename="scan.pdf"),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=120,
            )
            assert [page.number for page in paged.result.pages] == [1, 2]
            assert paged.result.text == "韩国小馆\n\f\n中国网络空间安全"

            # Without a token Envoy itself refuses (jwt_authn's message, not the OCR service's).
            try:
                await stub.Recognize(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Jwt is missing" in (exc.details() or ""), exc.details()
            else:
                raise AssertionError("a call without a token went through the gateway")
            try:
                await stub.Recognize(request, metadata=[("authorization", "Bearer not.a.jwt")], timeout=30)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            else:
                raise AssertionError("a bad token went through the gateway")

        # A new registration reaches Envoy's endpoints; its removal takes it out again.
        port = free_port()
        key = instance_key("ocr", "ocr-gw-new").encode()
        put_at = time.monotonic()
        await etcd_client.put(key, json.dumps({"address": f"127.0.0.1:{port}"}).encode())
        await eventually(lambda: _has(gateway.admin, "ocr", f"127.0.0.1:{port}"), 10)
        print(f"registration -> Envoy /clusters: {time.monotonic() - put_at:.3f} s")
        await etcd_client.delete(key)
        await eventually(lambda: _gone(gateway.admin, "ocr", f"127.0.0.1:{port}"), 10)

        # Envoy ACKed what it runs: the control plane's view and Envoy's config dump agree.
        dump = admin_json(gateway.admin, "/config_dump?resource=dynamic_active_clusters")
        versions = {c["cluster"]["name"]: c["version_info"] for c in dump["configs"]}
        assert {"ocr", "auth"} <= set(versions)

        # `ocrmesh status` lists the gateway's Envoy with the versions it ACKed.
        async def listed() -> bool:
            clients = (await collect(etcd.endpoint, 3.0))["xds_clients"]
            return any(
                c["node"] == gateway.info["node"] and c["types"]["CDS"]["acked"] == versions["ocr"]
                for c in clients
            )

        await eventually(listed, 15)
        argv = [sys.executable, "-m", "cli", "status", "--etcd", etcd.endpoint, "--json"]
        out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        [shown] = [c for c in json.loads(out.stdout)["xds_clients"] if c["node"] == gateway.info["node"]]
        assert shown["connected"] and shown["group"] == "gateway" and shown["types"]["LDS"]["acked"]


async def _has(admin: str, cluster: str, address: str) -> bool:
    return address in cluster_hosts(admin, cluster)


async def _gone(admin: str, cluster: str, address: str) -> bool:
    return address not in cluster_hosts(admin, cluster)
