"""The gateway's edge features with no backends at all: rate limit, gRPC-Web + CORS, TLS listener."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
from pathlib import Path

import aetcd
import grpc
import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from etcd.launcher import EtcdProcess
from mesh import balancer
from mesh.registry import instance_key
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.gateway_fixtures import healthy, running_gateway, start_gateway
from tests.integration.ocr_fixtures import stop

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below

HealthServicer = health_aio.HealthServicer


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_local_rate_limit_answers_resource_exhausted(tmp_path: Path, etcd: EtcdProcess) -> None:
    args = ("--rate-limit-rps", "1", "--rate-limit-burst", "2")
    with running_gateway(tmp_path, etcd.endpoint, *args) as gateway:
        async with balancer.direct_channel(gateway.address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            codes = [await _code(stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)) for _ in range(4)]
    # No auth instance is registered: allowed calls find no upstream (UNAVAILABLE); past the burst the
    # rate limit answers first, with the status a gRPC client backs off on.
    assert codes[:2] == [grpc.StatusCode.UNAVAILABLE] * 2, codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[2:], codes


def _preflight(address: str, origin: str) -> tuple[int, dict[str, str]]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "OPTIONS",
            "/grpc.health.v1.Health/Check",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-grpc-web,authorization",
            },
        )
        pre = conn.getresponse()
        pre.read()
        return pre.status, {k.lower(): v for k, v in pre.getheaders()}
    finally:
        conn.close()


def _grpc_web_and_cors(address: str) -> tuple[int, dict[str, str], int, dict[str, str]]:
    pre_status, pre_headers = _preflight(address, "http://localhost:8000")
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        body = health_pb2.HealthCheckRequest(service="").SerializeToString()
        frame = b"\x00" + len(body).to_bytes(4, "big") + body
        conn.request(
            "POST",
            "/grpc.health.v1.Health/Check",
            body=frame,
            headers={
                "Content-Type": "application/grpc-web+proto",
                "X-Grpc-Web": "1",
                "Origin": "http://localhost:8000",
            },
        )
        post = conn.getresponse()
        post.read()
        post_headers = {k.lower(): v for k, v in post.getheaders()}
        return pre_status, pre_headers, post.status, post_headers
    finally:
        conn.close()


async def test_grpc_web_and_cors_for_browsers(tmp_path: Path, etcd: EtcdProcess) -> None:
    with running_gateway(tmp_path, etcd.endpoint) as gateway:
        pre_status, pre, status, headers = await asyncio.to_thread(_grpc_web_and_cors, gateway.address)
        _, foreign = await asyncio.to_thread(_preflight, gateway.address, "https://evil.example")
    # Only the BFF's own origin (the default allow-list) may call from a browser; no echo of any Origin.
    assert "access-control-allow-origin" not in foreign, foreign
    assert pre_status == 200 and pre.get("access-control-allow-origin") == "http://localhost:8000", pre
    assert "authorization" in pre.get("access-control-allow-headers", ""), pre
    # HTTP/1.1 gRPC-Web in, answered as gRPC-Web (no instance: grpc-status UNAVAILABLE in the headers),
    # in a trailers-only HTTP 200 as gRPC-Web clients expect, not Envoy's local reply status (503).
    assert status == 200 and headers.get("content-type", "").startswith("application/grpc-web"), headers
    assert headers.get("grpc-status") == str(grpc.StatusCode.UNAVAILABLE.value[0]), headers
    assert "grpc-status" in headers.get("access-control-expose-headers", ""), headers


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "gateway.crt", tmp / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_listener(tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client) -> None:
    # A stand-in "auth" upstream: health only, so a GetJwks that reaches it is UNIMPLEMENTED.
    upstream = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, upstream)
    port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    await health.set("ocrmesh.auth.v1.AuthService", health_pb2.HealthCheckResponse.SERVING)
    address = f"127.0.0.1:{port}"
    await etcd_client.put(
        instance_key("auth", "tls-upstream").encode(), json.dumps({"address": address}).encode()
    )
    cert, key = _self_signed(tmp_path)
    try:
        with running_gateway(
            tmp_path, etcd.endpoint, "--tls-cert", str(cert), "--tls-key", str(key)
        ) as gateway:
            await eventually(lambda: _healthy(gateway.admin, address), 20)
            gw_port = gateway.address.rsplit(":", 1)[1]
            creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{gw_port}", creds) as channel:
                code = await _code(
                    auth_pb2_grpc.AuthServiceStub(channel).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
                )
            async with balancer.direct_channel(gateway.address) as plain:
                plain_code = await _code(
                    auth_pb2_grpc.AuthServiceStub(plain).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
                )
    finally:
        await upstream.stop(0)
    # Over TLS the call crossed Envoy to the upstream, which does not implement it; plaintext never gets in.
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert plain_code == grpc.StatusCode.UNAVAILABLE


async def _healthy(admin: str, address: str) -> bool:
    return address in await asyncio.to_thread(healthy, admin, "auth")


def _envoy_child(pid: int) -> psutil.Process:
    [envoy] = [p for p in psutil.Process(pid).children(recursive=True) if "envoy" in p.name()]
    return envoy


async def test_envoy_never_outlives_the_gateway(tmp_path: Path, etcd: EtcdProcess) -> None:
    # SIGTERM: the gateway stops Envoy itself before it exits.
    gateway = start_gateway(tmp_path, etcd.endpoint)
    envoy = _envoy_child(gateway.proc.pid)
    assert stop(gateway.proc) == 0
    assert not envoy.is_running() or envoy.status() == psutil.STATUS_ZOMBIE
    # SIGKILL: no chance to clean up; the parent-death signal still takes Envoy down.
    gateway = start_gateway(tmp_path, etcd.endpoint)
    envoy = _envoy_child(gateway.proc.pid)
    gateway.proc.kill()
    gateway.proc.wait(10)
    gone, _ = await asyncio.to_thread(psutil.wait_procs, [envoy], 15)
    assert gone, "Envoy outlived a killed gateway"
