"""Throttles that protect, not punish, on real processes: the address throttle keys on the real
client (the BFF passes it, auth believes only --trusted-proxies), the counts are shared by every
auth instance on one database and survive a restart, and registrations are throttled per address."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from mesh import balancer, errors
from tests.integration.auth_fixtures import running_auth, start_auth
from tests.integration.bff_fixtures import running_mesh
from tests.integration.etcd_fixtures import make_etcd
from tests.integration.gateway_fixtures import running_gateway
from tests.integration.ocr_fixtures import stop

PASSWORD = "correct horse 42"


@contextlib.contextmanager
def browser(url: str, source: str) -> Iterator[httpx.Client]:
    """A browser whose connections come from `source` (another loopback address: another client)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, timeout=90.0, transport=transport) as client:
        client.headers["X-CSRF-Token"] = client.get("/api/csrf").json()["csrf"]
        yield client


def test_an_attacker_behind_the_bff_locks_out_only_himself(tmp_path: Path) -> None:
    with running_mesh(
        tmp_path,
        ("--instance-id", "thr-ocr"),
        auth_args=("--trusted-proxies", "127.0.0.1", "--throttle-base-s", "60"),
    ) as mesh:
        with browser(mesh.url, "127.0.0.3") as victim, browser(mesh.url, "127.0.0.2") as attacker:
            got = victim.post("/api/register", json={"username": "victim", "password": PASSWORD})
            assert got.status_code == 201, got.text
            attacker.post("/api/register", json={"username": "attacker", "password": PASSWORD})
            # 26 failed logins, each under a different made-up name: the address throttle (20) bites.
            answers = [
                attacker.post("/api/login", json={"username": f"nobody{i}", "password": "wrong password!"})
                for i in range(26)
            ]
            codes = [a.status_code for a in answers]
            assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}, codes
            assert answers[-1].json()["error"] == "throttled" and "failed logins" in answers[-1].text
            assert "Retry-After" in answers[-1].headers
            # The attacker's address is throttled even with a right password ...
            own = attacker.post("/api/login", json={"username": "attacker", "password": PASSWORD})
            assert own.status_code == 429, own.text
            # ... and every other browser behind the same BFF logs in.
            got = victim.post("/api/login", json={"username": "victim", "password": PASSWORD})
            assert got.status_code == 200, got.text


async def test_two_instances_share_the_count_and_a_restart_keeps_it(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    args = ("--db", db, "--throttle-user-failures", "5", "--throttle-base-s", "120")
    first = start_auth(tmp_path / "a", *args)
    try:
        with running_auth(tmp_path / "b", *args) as second:
            async with (
                balancer.direct_channel(first.address) as one,
                balancer.direct_channel(second.address) as two,
            ):
                stubs = [auth_pb2_grpc.AuthServiceStub(one), auth_pb2_grpc.AuthServiceStub(two)]
                await stubs[0].Register(auth_pb2.RegisterRequest(username="target", password=PASSWORD))
                checked = 0  # password checks the brute force got, alternating the two instances
                for attempt in range(12):
                    stub = stubs[attempt % 2]
                    try:
                        await stub.Login(
                            auth_pb2.LoginRequest(username="target", password=f"guess {attempt}!")
                        )
                    except grpc.aio.AioRpcError as exc:
                        reason = errors.error_reason(errors.from_call_error(exc))
                        if reason == "LOGIN_THROTTLED":
                            break
                        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                        checked += 1
                assert checked == 5  # what one instance alone would allow
            stop(first.proc)
            first = start_auth(tmp_path / "a2", *args)  # restarted on the same database
            async with balancer.direct_channel(first.address) as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                try:
                    await stub.Login(auth_pb2.LoginRequest(username="target", password=PASSWORD))
                    raise AssertionError("the restart reset the lockout")
                except grpc.aio.AioRpcError as exc:
                    assert errors.error_reason(errors.from_call_error(exc)) == "LOGIN_THROTTLED"
    finally:
        stop(first.proc)


async def test_registrations_are_throttled_per_address(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    with running_auth(tmp_path, "--db", db, "--throttle-register-per-address", "3") as auth:
        async with balancer.direct_channel(auth.address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            await stub.Register(auth_pb2.RegisterRequest(username="first", password=PASSWORD))
            await stub.Register(auth_pb2.RegisterRequest(username="second", password=PASSWORD))
            try:  # a probe for a taken name counts like any registration
                await stub.Register(auth_pb2.RegisterRequest(username="first", password=PASSWORD))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
            try:
                await stub.Register(auth_pb2.RegisterRequest(username="fourth", password=PASSWORD))
                raise AssertionError("a fourth registration from one address passed")
            except grpc.aio.AioRpcError as exc:
                status = errors.from_call_error(exc)
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert errors.error_reason(status) == "REGISTER_THROTTLED"
                delay = errors.retry_delay_s(status)
                assert delay is not None and delay > 30


async def test_through_the_gateway_a_forged_forwarded_for_does_not_escape_the_throttle(
    tmp_path: Path,
) -> None:
    """Envoy appends the address it saw; auth reads that last entry, not the client's own words."""
    etcd = make_etcd(tmp_path)
    await etcd.start()
    try:
        db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
        args = (
            *("--etcd", etcd.endpoint, "--db", db, "--trusted-proxies", "127.0.0.1"),
            *("--throttle-address-failures", "4", "--throttle-base-s", "60"),
        )
        with running_auth(tmp_path, *args), running_gateway(tmp_path, etcd.endpoint) as gateway:
            async with balancer.direct_channel(gateway.address) as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                for attempt in range(30):  # the auth route is up once auth is registered
                    try:
                        await stub.Register(auth_pb2.RegisterRequest(username="gw-user", password=PASSWORD))
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < 29, exc
                        await asyncio.sleep(1)
                for i in range(4):  # each claims another address; all come from 127.0.0.1
                    forged = [("x-forwarded-for", f"6.6.6.{i}")]
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await stub.Login(
                            auth_pb2.LoginRequest(username=f"made-up-{i}", password="nope nope"),
                            metadata=forged,
                        )
                    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as throttled:
                    await stub.Login(
                        auth_pb2.LoginRequest(username="gw-user", password=PASSWORD),
                        metadata=[("x-forwarded-for", "7.7.7.7")],
                    )
                assert errors.error_reason(errors.from_call_error(throttled.value)) == "LOGIN_THROTTLED"
    finally:
        await etcd.stop()
