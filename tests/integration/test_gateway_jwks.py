"""Envoy's jwt_authn follows the JWKS in etcd: a key rotation there changes which tokens get through."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid
from pathlib import Path

import aetcd
import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from etcd.launcher import EtcdProcess
from mesh import balancer
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER, JWKS_KEY
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.gateway_fixtures import (
    healthy_in_envoy,
    running_gateway,
    stand_in_ocr_fixture,
)

__all__ = ["etcd_client_fixture", "etcd_fixture", "stand_in_ocr_fixture"]  # pytest fixtures used below


class Key:
    """An ES256 signing key and its public JWK."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = {**json.loads(ECAlgorithm.to_jwk(self.private.public_key())), "kid": kid, "alg": "ES256"}

    def token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": DEFAULT_ISSUER,
            "aud": DEFAULT_AUDIENCE,
            "sub": "u1",
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.private, algorithm="ES256", headers={"kid": self.kid})


async def test_key_rotation_in_etcd_reaches_envoy(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client, stand_in_ocr: str
) -> None:
    old, new = Key("k-old"), Key("k-new")
    await etcd_client.put(JWKS_KEY.encode(), json.dumps({"keys": [old.jwk]}).encode())
    with running_gateway(tmp_path, etcd.endpoint) as gateway:
        await eventually(lambda: healthy_in_envoy(gateway.admin, stand_in_ocr), 20)
        async with balancer.direct_channel(gateway.address) as channel:
            stub = ocr_pb2_grpc.OcrServiceStub(channel)

            async def code(token: str) -> grpc.StatusCode:
                try:
                    await stub.GetInfo(
                        ocr_pb2.GetInfoRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=5
                    )
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            # Passing jwt_authn means reaching the stand-in, which does not implement GetInfo.
            await eventually(lambda: _is(code(old.token()), grpc.StatusCode.UNIMPLEMENTED), 20)
            assert await code(new.token()) == grpc.StatusCode.UNAUTHENTICATED
            # Rotate: the new key only. The control plane re-pushes the listener with the new JWKS.
            await etcd_client.put(JWKS_KEY.encode(), json.dumps({"keys": [new.jwk]}).encode())
            await eventually(lambda: _is(code(new.token()), grpc.StatusCode.UNIMPLEMENTED), 20)
            assert await code(old.token()) == grpc.StatusCode.UNAUTHENTICATED
            # Something that is not a JWKS is ignored: the last good keys stay in force.
            await etcd_client.put(JWKS_KEY.encode(), b"not json")
            await eventually(lambda: _is(code(new.token()), grpc.StatusCode.UNIMPLEMENTED), 5)
        # A good token in the query string is no token at all, and never reaches the access log.
        token = new.token()
        status = await asyncio.to_thread(_grpc_web_get_info, gateway.address, f"?access_token={token}")
        assert status == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    log = gateway.log_text()
    assert "/ocrmesh.ocr.v1.OcrService/GetInfo" in log  # the call was logged ...
    assert token not in log and "access_token" not in log  # ... without its query string


def _grpc_web_get_info(address: str, query: str) -> str:
    """grpc-status of a gRPC-Web GetInfo sent over HTTP/1.1 with `query` after the path."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        body = ocr_pb2.GetInfoRequest().SerializeToString()
        frame = b"\x00" + len(body).to_bytes(4, "big") + body
        headers = {"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"}
        conn.request("POST", "/ocrmesh.ocr.v1.OcrService/GetInfo" + query, body=frame, headers=headers)
        answer = conn.getresponse()
        answer.read()
        return str(answer.getheader("grpc-status", ""))
    finally:
        conn.close()


async def _is(got: object, want: grpc.StatusCode) -> bool:
    return bool(await got == want)  # type: ignore[misc]
