"""Tokens across the mesh: auth registers and publishes its JWKS in etcd, OCR enforces tokens."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aetcd
import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from auth_svc import keys
from auth_svc.config import AuthConfig
from auth_svc.server import AuthInstance
from auth_svc.store import UserRecord
from auth_svc.tokens import TokenSettings, issue_access_token
from etcd.launcher import EtcdProcess
from mesh import balancer, errors
from mesh.jwks_source import JWKS_KEY
from mesh.registry import instance_key
from tests.corpus import CORPUS
from tests.integration.auth_fixtures import fast_config, running_auth
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.ocr_fixtures import OcrProcess, start_ocr, stop
from tests.integration.rpc_status import bearer, code, refused

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
PASSWORD = "correct horse battery"
OCR = "ocrmesh.ocr.v1.OcrService"


async def test_auth_process_registers_publishes_jwks_and_leaves_first_on_sigterm(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    registry_key = instance_key("auth", "auth-reg-1").encode()
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    args = ("--etcd", etcd.endpoint, "--instance-id", "auth-reg-1", "--lease-ttl-s", "3", "--db", db)
    with running_auth(tmp_path, *args) as svc:
        # The ready file is written once registered and published (etcd is up).
        got = await etcd_client.get(registry_key)
        assert got is not None and got.lease != 0
        record = json.loads(got.value)
        assert record["address"] == svc.address and record["db"] == "sqlite"
        published = await etcd_client.get(JWKS_KEY.encode())
        assert published is not None
        async with balancer.direct_channel(svc.address) as channel:
            served = await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(
                auth_pb2.GetJwksRequest(), timeout=5
            )
        assert json.loads(published.value) == json.loads(served.jwks_json)
        assert [k["kid"] for k in json.loads(published.value)["keys"]] == [k.kid for k in served.keys]

        svc.proc.send_signal(signal.SIGTERM)

        async def gone() -> bool:
            return await etcd_client.get(registry_key) is None

        # Revoked at the start of the drain, long before the 3 s TTL could run out.
        await eventually(gone, timeout=2.0)
        assert await asyncio.to_thread(svc.proc.wait, 20) == 0
        # The JWKS is not leased: tokens already issued stay verifiable with no auth instance up.
        assert await etcd_client.get(JWKS_KEY.encode()) is not None


def auth_config(tmp_path: Path, etcd: str, **over: Any) -> AuthConfig:
    return fast_config(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}", etcd=etcd, **over)


@pytest.fixture
async def ocr_with_auth(tmp_path: Path, etcd: EtcdProcess) -> AsyncIterator[OcrProcess]:
    """An OCR process requiring tokens, started before any auth service has published keys."""
    svc = await asyncio.to_thread(
        start_ocr, tmp_path / "ocr", "--workers", "1", "--etcd", etcd.endpoint, "--require-auth"
    )
    try:
        yield svc
    finally:
        await asyncio.to_thread(stop, svc.proc)


def forged_token(kid: str, **claims: Any) -> str:
    """A well-formed ES256 token with the real `kid`, signed by a key the mesh never trusted."""
    impostor = keys.generate(time.time(), time.time())
    now = int(time.time())
    body = {"iss": "ocrmesh-auth", "aud": "ocrmesh", "sub": "u", "iat": now, "exp": now + 900, "jti": "x"}
    body.update(claims)
    return jwt.encode(body, impostor.private_key, algorithm="ES256", headers={"kid": kid})


def unsigned_token(kid: str) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": "ocrmesh-auth", "aud": "ocrmesh", "sub": "u", "iat": now, "exp": now + 900, "jti": "x"}
    return f"{part({'alg': 'none', 'kid': kid})}.{part(claims)}."


def tampered(token: str, **claims: Any) -> str:
    """The token with its payload changed and the original signature kept."""
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


async def test_ocr_requires_valid_tokens_from_the_etcd_jwks_and_follows_rotation(
    tmp_path: Path, etcd: EtcdProcess, ocr_with_auth: OcrProcess
) -> None:
    async with balancer.direct_channel(ocr_with_auth.address) as channel:
        ocr = ocr_pb2_grpc.OcrServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=OCR), timeout=5)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING  # health needs no token

        # No auth service has published keys yet: a clear, retryable refusal.
        before = await refused(ocr.GetInfo(ocr_pb2.GetInfoRequest(), metadata=bearer("x.y.z"), timeout=5))
        assert code(before) == grpc.StatusCode.UNAVAILABLE
        assert errors.error_reason(before) == "JWKS_NOT_LOADED" and JWKS_KEY in before.message

        async with AuthInstance(auth_config(tmp_path, etcd.endpoint)) as auth:
            async with balancer.direct_channel(auth.address) as auth_channel:
                accounts = auth_pb2_grpc.AuthServiceStub(auth_channel)
                await accounts.Register(auth_pb2.RegisterRequest(username="alice", password=PASSWORD))

                async def fresh_token() -> str:
                    reply = await accounts.Login(auth_pb2.LoginRequest(username="alice", password=PASSWORD))
                    return str(reply.tokens.access_token)

                token = await fresh_token()

                async def accepted(candidate: str) -> bool:
                    try:
                        await ocr.GetInfo(ocr_pb2.GetInfoRequest(), metadata=bearer(candidate), timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
                        return False
                    return True

                # The JWKS the instance published at start reaches OCR within a poll or two.
                assert await eventually(lambda: accepted(token), timeout=3.0) < 2.0
                reply = await ocr.Recognize(
                    ocr_pb2.RecognizeRequest(image=PHOTO.read_bytes()), metadata=bearer(token), timeout=60
                )
                assert "正品促销" in reply.result.text

                kid = auth.keyring.signer().kid
                user = UserRecord("user-1", "alice", "", time.time())
                settings = TokenSettings("ocrmesh-auth", "ocrmesh", 900.0, 3600.0)
                expired, _ = issue_access_token(
                    auth.keyring.signer(), user, time.time() - 3600, settings, "s-old"
                )
                other_audience = dataclasses.replace(settings, audience="someone-else")
                wrong_aud, _ = issue_access_token(
                    auth.keyring.signer(), user, time.time(), other_audience, "s-aud"
                )
                bad_tokens = {
                    "forged": (forged_token(kid), "TOKEN_INVALID"),
                    "alg none": (unsigned_token(kid), "TOKEN_INVALID"),
                    "expired": (expired, "TOKEN_EXPIRED"),
                    "wrong audience": (wrong_aud, "TOKEN_INVALID"),
                    "tampered": (tampered(token, sub="someone-else"), "TOKEN_INVALID"),
                }
                for name, (bad, reason) in bad_tokens.items():
                    status = await refused(
                        ocr.GetInfo(ocr_pb2.GetInfoRequest(), metadata=bearer(bad), timeout=5)
                    )
                    assert code(status) == grpc.StatusCode.UNAUTHENTICATED, name
                    assert not reason or errors.error_reason(status) == reason, (name, status)
                missing = await refused(ocr.Recognize(ocr_pb2.RecognizeRequest(image=b"x"), timeout=5))
                assert code(missing) == grpc.StatusCode.UNAUTHENTICATED
                assert errors.error_reason(missing) == "TOKEN_MISSING"

                async def one_chunk() -> AsyncIterator[ocr_pb2.RecognizeStreamRequest]:
                    yield ocr_pb2.RecognizeStreamRequest(chunk=b"x")

                streamed = await refused(ocr.RecognizeStream(one_chunk(), timeout=5))
                assert code(streamed) == grpc.StatusCode.UNAUTHENTICATED

                # Rotation: the new key signs at once; OCR must trust it within about 2 s.
                new_key = await auth.keyring.rotate(publish_ahead_s=0.0)
                rotated = await fresh_token()
                assert jwt.get_unverified_header(rotated)["kid"] == new_key.kid != kid
                took = await eventually(lambda: accepted(rotated), timeout=3.0)
                assert took < 2.0, f"the rotated key reached OCR after {took:.2f}s"
                assert await accepted(token)  # the old key stays published for its tokens
