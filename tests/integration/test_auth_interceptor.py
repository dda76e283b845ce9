"""AuthInterceptor on a real grpc.aio server: no, forged or expired token refused; valid passes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from auth_svc import keys
from mesh import errors
from mesh.token_verify import AuthInterceptor, TokenVerifier, current_claims

ISS, AUD = "ocrmesh-auth", "ocrmesh"
WHO = "/test.Echo/Who"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    claims = current_claims.get()
    return json.dumps(claims).encode()


def token_for(key: ec.EllipticCurvePrivateKey, kid: str, **over: Any) -> str:
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": "user-1",
        "iat": int(NOW),
        "exp": int(NOW) + 900,
        "jti": "j",
    }
    claims.update(over)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def signing() -> keys.SigningKey:
    return keys.generate(NOW, NOW)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def channel(signing: keys.SigningKey, clock: Clock) -> AsyncIterator[grpc.aio.Channel]:
    verifier = TokenVerifier(keys.jwks_document([signing]), issuer=ISS, audience=AUD, clock=clock)
    server = grpc.aio.server(interceptors=[AuthInterceptor(verifier, public_methods=())])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(0)


async def call(channel: grpc.aio.Channel, token: str | None) -> bytes:
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    answer: bytes = await channel.unary_unary(WHO)(b"", metadata=metadata)
    return answer


async def reason_of(channel: grpc.aio.Channel, token: str | None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(channel, token)
    status = errors.from_call_error(failed.value)
    return failed.value.code(), errors.error_reason(status)


async def test_valid_token_passes_with_claims(channel: grpc.aio.Channel, signing: keys.SigningKey) -> None:
    answer = json.loads(await call(channel, token_for(signing.private_key, signing.kid)))
    assert answer["sub"] == "user-1"


async def test_refusals(channel: grpc.aio.Channel, signing: keys.SigningKey, clock: Clock) -> None:
    forged = token_for(ec.generate_private_key(ec.SECP256R1()), signing.kid, sub="admin")
    assert await reason_of(channel, None) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    assert await reason_of(channel, forged) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert await reason_of(channel, "garbage") == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    valid = token_for(signing.private_key, signing.kid)
    clock.now += 3600
    assert await reason_of(channel, valid) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


async def test_streaming_methods_are_guarded_too(channel: grpc.aio.Channel, signing: keys.SigningKey) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in stub.Watch(health_pb2.HealthCheckRequest()):
            break
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = token_for(signing.private_key, signing.kid)
    metadata = [("authorization", f"Bearer {token}")]
    async for answer in stub.Watch(health_pb2.HealthCheckRequest(), metadata=metadata):
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        break
