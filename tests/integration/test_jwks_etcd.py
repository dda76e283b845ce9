"""The JWKS in a real etcd: the publisher retries through outages, the source keeps the last good keys."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aetcd
import grpc
import jwt
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from auth_svc import keys
from auth_svc.jwks_publisher import JwksPublisher
from etcd.launcher import EtcdProcess
from mesh import errors, identity_files
from mesh.certificate_authority import CertificateAuthority
from mesh.jwks_signature import sign_jwks
from mesh.jwks_source import JWKS_KEY, JwksAuthInterceptor, JwksSource
from mesh.session_revocations import REVOKED_SESSIONS_KEY, encode_revocations
from mesh.token_verify import TokenInvalid, TokenVerifier
from mesh.workload_identity import WorkloadIdentity
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below

ISS, AUD = "ocrmesh-auth", "ocrmesh"


def signed(key: keys.SigningKey) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "u1", "iat": now, "exp": now + 900, "jti": "j"}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid})


def document(*signing: keys.SigningKey) -> str:
    return json.dumps(keys.jwks_document(list(signing)))


def accepts(verifier: TokenVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except TokenInvalid:
        return False
    return True


async def test_source_follows_rotation_and_keeps_the_last_good_keys(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    first, second = keys.generate(time.time(), time.time()), keys.generate(time.time(), time.time())
    verifier = TokenVerifier(issuer=ISS, audience=AUD)
    async with JwksSource(etcd.endpoint, verifier, interval=0.1, call_timeout=0.5) as source:
        assert not await source.wait_ready(0.3)  # nothing published yet
        await etcd_client.put(JWKS_KEY.encode(), document(first).encode())
        assert await source.wait_ready(2.0)
        assert accepts(verifier, signed(first)) and not accepts(verifier, signed(second))

        await etcd_client.put(JWKS_KEY.encode(), document(first, second).encode())
        took = await eventually(lambda: _async(accepts(verifier, signed(second))), timeout=2.0)
        assert took < 1.0

        # Garbage, an empty key set and a deleted key all leave the keys in force.
        for bad in (b"not json", b'{"keys": []}', b'{"keys": "x"}'):
            rejected = source.rejected
            await etcd_client.put(JWKS_KEY.encode(), bad)
            await eventually(functools.partial(_rejected_more_than, source, rejected), timeout=2.0)
        await etcd_client.delete(JWKS_KEY.encode())
        await eventually(lambda: _async("no JWKS" in source.last_error), timeout=2.0)
        assert source.kids == {first.kid, second.kid}
        assert accepts(verifier, signed(first)) and accepts(verifier, signed(second))

        # etcd frozen, then killed: tokens still verify with the last keys.
        assert source.connected
        etcd.pause()
        try:
            await eventually(lambda: _async(not source.connected), timeout=3.0)
            assert "TimeoutError" in source.last_error
            assert accepts(verifier, signed(second))
        finally:
            etcd.resume()
        await eventually(lambda: _async(source.connected), timeout=3.0)
        await etcd.kill()
        await eventually(lambda: _async(not source.connected), timeout=3.0)
        assert accepts(verifier, signed(second)) and source.ready
        await etcd.restart()
        third = keys.generate(time.time(), time.time())
        client = aetcd.Client(host=etcd.host, port=etcd.client_port, timeout=1)
        try:
            await client.put(JWKS_KEY.encode(), document(third).encode())
        finally:
            await client.close()
        await eventually(lambda: _async(accepts(verifier, signed(third))), timeout=4.0)
        assert not accepts(verifier, signed(first))  # a retired key is dropped once replaced


async def _async(value: bool) -> bool:
    return value


async def test_publisher_retries_until_etcd_is_back_and_restores_a_lost_key(etcd: EtcdProcess) -> None:
    key = keys.generate(time.time(), time.time())
    jwks = keys.jwks_document([key])
    publisher = JwksPublisher(etcd.endpoint, call_timeout=0.5, check_interval=0.3)
    await etcd.kill()
    await publisher.start()
    try:
        await publisher.publish(jwks)
        assert not await publisher.wait_published(1.5)
        assert publisher.failures >= 1 and publisher.last_error
        await etcd.restart()
        assert await publisher.wait_published(5.0)
        client = aetcd.Client(host=etcd.host, port=etcd.client_port, timeout=1)
        try:
            got = await client.get(JWKS_KEY.encode())
            assert got is not None and json.loads(got.value) == jwks
            # etcd lost the key (wiped, restored from an old backup): the publisher puts it back.
            await client.delete(JWKS_KEY.encode())
            await eventually(lambda: _present(client), timeout=3.0)
        finally:
            await client.close()
    finally:
        await publisher.close()


async def _present(client: aetcd.Client) -> bool:
    return await client.get(JWKS_KEY.encode()) is not None


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def _echo_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for item in requests:
        yield item


async def test_interceptor_answers_unavailable_until_the_first_jwks(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    signing = keys.generate(time.time(), time.time())
    source = JwksSource(etcd.endpoint, TokenVerifier(issuer=ISS, audience=AUD), interval=0.1)
    server = grpc.aio.server(interceptors=[JwksAuthInterceptor(source)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Chat": grpc.stream_stream_rpc_method_handler(_echo_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await source.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/test.Echo/Echo")
            chat = channel.stream_stream("/test.Echo/Chat")
            metadata = [("authorization", f"Bearer {signed(signing)}")]
            for call in (echo(b"hi", metadata=metadata, timeout=5), _drain(chat(iter([b"a"]), timeout=5))):
                try:
                    await call
                    raise AssertionError("answered before any JWKS was loaded")
                except grpc.aio.AioRpcError as exc:
                    status = errors.from_call_error(exc)
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert errors.error_reason(status) == "JWKS_NOT_LOADED"
                    assert errors.retry_delay_s(status) == 1.0
            checked = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert checked.status == health_pb2.HealthCheckResponse.SERVING  # public methods stay open

            await etcd_client.put(JWKS_KEY.encode(), document(signing).encode())
            assert await source.wait_ready(2.0)
            assert await echo(b"hi", metadata=metadata, timeout=5) == b"hi"
            assert [r async for r in chat(iter([b"a", b"b"]), metadata=metadata, timeout=5)] == [b"a", b"b"]
            try:
                await echo(b"hi", timeout=5)
                raise AssertionError("answered without a token")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await source.close()
        await server.stop(0)


async def _drain(call: Any) -> list[Any]:
    return [item async for item in call]


async def _rejected_more_than(source: JwksSource, count: int) -> bool:
    return source.rejected > count


def _identity(tmp: Path, ca: CertificateAuthority, service: str) -> WorkloadIdentity:
    folder = tmp / f"{service}-{id(ca)}"
    identity_files.write(folder, ca.issue(service, f"{service}-1"), ca.cert_pem)
    return WorkloadIdentity(folder)


async def test_with_a_mesh_identity_only_a_jwks_signed_by_auth_is_taken(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    ca, other_ca = CertificateAuthority.create("example.test"), CertificateAuthority.create("example.test")
    auth = _identity(tmp_path, ca, "auth")
    real, attacker = keys.generate(time.time(), time.time()), keys.generate(time.time(), time.time())
    verifier = TokenVerifier(issuer=ISS, audience=AUD)
    plain_verifier = TokenVerifier(issuer=ISS, audience=AUD)
    publisher = JwksPublisher(etcd.endpoint, call_timeout=0.5, check_interval=0.3, signer=auth)
    source = JwksSource(etcd.endpoint, verifier, interval=0.1, trust=_identity(tmp_path, ca, "ocr"))
    plain = JwksSource(etcd.endpoint, plain_verifier, interval=0.1, trust=None)
    await publisher.start()
    try:
        async with source, plain:
            await publisher.publish(keys.jwks_document([real]))
            assert await source.wait_ready(3.0) and await plain.wait_ready(3.0)
            assert source.signer == "spiffe://example.test/auth/auth-1"
            assert accepts(verifier, signed(real))
            assert accepts(plain_verifier, signed(real))  # plaintext: the content, unchecked

            # Whoever holds an etcd credential writes the attacker's key: unsigned, signed by a
            # mesh identity that is not auth, by auth of another CA. None is taken.
            forged = document(attacker).encode()
            for bad in (
                forged,
                sign_jwks(forged, _identity(tmp_path, ca, "admin").current),
                sign_jwks(forged, _identity(tmp_path, other_ca, "auth").current),
            ):
                rejected = source.rejected
                await etcd_client.put(JWKS_KEY.encode(), bad)
                await eventually(functools.partial(_rejected_more_than, source, rejected), timeout=2.0)
                assert "not signed by an auth identity" in source.last_error
            assert accepts(verifier, signed(real)) and not accepts(verifier, signed(attacker))

            # auth's certificate rotates: the publisher signs again with the new one.
            identity_files.write(auth.directory, ca.issue("auth", "auth-2"), ca.cert_pem)
            await eventually(lambda: _async(source.signer.endswith("/auth/auth-2")), timeout=5.0)
            assert accepts(verifier, signed(real))
    finally:
        await publisher.close()


async def test_with_a_mesh_identity_only_revocations_signed_by_auth_are_taken(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    """Whoever can write etcd cannot un-revoke sessions: a plain, foreign-signed or deleted value
    leaves the last set signed by auth in force; a plaintext verifier takes the signed content."""
    ca = CertificateAuthority.create("example.test")
    auth, admin = _identity(tmp_path, ca, "auth"), _identity(tmp_path, ca, "admin")
    verifier, plain_verifier = (
        TokenVerifier(issuer=ISS, audience=AUD),
        TokenVerifier(issuer=ISS, audience=AUD),
    )
    source = JwksSource(etcd.endpoint, verifier, interval=0.1, trust=_identity(tmp_path, ca, "ocr"))
    plain = JwksSource(etcd.endpoint, plain_verifier, interval=0.1, trust=None)
    key = REVOKED_SESSIONS_KEY.encode()
    revoked = encode_revocations({"family-1": time.time() + 900})
    async with source, plain:
        await etcd_client.put(key, sign_jwks(revoked, auth.current))
        await eventually(
            lambda: _async(verifier.revoked_sessions == 1 and plain_verifier.revoked_sessions == 1), 3.0
        )

        def sessions(count: int) -> bytes:
            return encode_revocations({f"other-{i}": time.time() + 900 for i in range(count)})

        # Each attack leaves a set of another size, so the plaintext verifier shows it was read.
        for attack, seen in ((sessions(2), 2), (sign_jwks(sessions(3), admin.current), 3), (None, 0)):
            if attack is None:
                await etcd_client.delete(key)
            else:
                await etcd_client.put(key, attack)
            await eventually(functools.partial(_plain_sees, plain_verifier, seen), 3.0)
            assert verifier.revoked_sessions == 1
        await etcd_client.put(key, sign_jwks(encode_revocations({}), auth.current))
        await eventually(lambda: _async(verifier.revoked_sessions == 0), 3.0)


async def _plain_sees(verifier: TokenVerifier, count: int) -> bool:
    return verifier.revoked_sessions == count
