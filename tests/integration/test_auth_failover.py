"""Two auth processes on one database (SQLite, PostgreSQL): kill -9 one under login load, lose none."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aetcd
import grpc
import pytest
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from etcd.launcher import EtcdProcess
from mesh import balancer
from mesh.discovery import Discovery
from mesh.jwks_source import JWKS_KEY
from tests.integration.auth_fixtures import AuthProcess, start_auth
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture
from tests.integration.ocr_fixtures import stop
from tests.integration.pg_fixtures import BACKENDS, Database, database

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below

PASSWORD = "correct horse battery"
USERS = [f"user{i}" for i in range(8)]
CONCURRENCY = 4
CALL_TIMEOUT_S = 5.0
ATTEMPTS = 4


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as target:
        yield target


@contextlib.contextmanager
def two_auth_instances(tmp_path: Path, etcd: str, db: Database) -> Iterator[list[AuthProcess]]:
    args = ["--etcd", etcd, "--lease-ttl-s", "2", "--db", db.url, "--bcrypt-concurrency", "1"]
    if db.schema:
        args += ["--db-schema", db.schema]
    started: list[AuthProcess] = []
    try:
        for name in ("auth-a", "auth-b"):
            started.append(start_auth(tmp_path, *args, "--instance-id", name))
        yield started
    finally:
        for svc in started:
            stop(svc.proc, grace_s=10)


@dataclass
class LoginLoad:
    """Closed-loop logins over the discovered auth instances; UNAVAILABLE moves on to the next one."""

    discovery: Discovery
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    ok: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: dict[str, int] = field(default_factory=dict)
    _turn: Iterator[int] = field(default_factory=itertools.count)

    def _stub(self, address: str) -> auth_pb2_grpc.AuthServiceStub:
        if address not in self.channels:
            self.channels[address] = balancer.direct_channel(address)
        return auth_pb2_grpc.AuthServiceStub(self.channels[address])

    def _order(self) -> list[str]:
        addresses = sorted(i.address for i in self.discovery.endpoints().values())
        if not addresses:
            return []
        start = next(self._turn) % len(addresses)
        return addresses[start:] + addresses[:start]

    async def login(self, user: str) -> None:
        last = "no auth instance discovered"
        order = self._order()
        for attempt in range(ATTEMPTS):
            if not order:
                await asyncio.sleep(0.05)
                order = self._order()
                continue
            address = order[attempt % len(order)]
            try:
                reply = await self._stub(address).Login(
                    auth_pb2.LoginRequest(username=user, password=PASSWORD), timeout=CALL_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as exc:
                last = f"{address}: {exc.code().name} {exc.details()}"
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    break
                self.retried += 1
                continue
            assert reply.tokens.access_token
            self.ok += 1
            self.served_by[address] = self.served_by.get(address, 0) + 1
            return
        self.failures.append(f"{user}: {last}")

    async def worker(self, index: int, until: float) -> None:
        # Worker i uses users i, i+4, ...: no two workers ever log in as the same user at once.
        for n in itertools.count():
            if time.monotonic() >= until:
                return
            await self.login(USERS[(index + CONCURRENCY * n) % len(USERS)])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def test_kill_one_of_two_auth_instances_under_login_load_loses_no_login(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client, db: Database
) -> None:
    with two_auth_instances(tmp_path, etcd.endpoint, db) as (first, second):
        async with Discovery(etcd.endpoint, "auth") as discovery:
            both = await discovery.wait_for(lambda found: len(found) == 2, timeout=5)
            assert {i.address for i in both.values()} == {first.address, second.address}
            # One database, one key set: both instances published the same JWKS.
            async with (
                balancer.direct_channel(first.address) as a,
                balancer.direct_channel(second.address) as b,
            ):
                jwks_a = await auth_pb2_grpc.AuthServiceStub(a).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
                jwks_b = await auth_pb2_grpc.AuthServiceStub(b).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
                stub = auth_pb2_grpc.AuthServiceStub(a)
                for user in USERS:
                    await stub.Register(
                        auth_pb2.RegisterRequest(username=user, password=PASSWORD), timeout=10
                    )
            assert json.loads(jwks_a.jwks_json) == json.loads(jwks_b.jwks_json)
            published = await etcd_client.get(JWKS_KEY.encode())
            assert published is not None and json.loads(published.value) == json.loads(jwks_a.jwks_json)

            load = LoginLoad(discovery)
            try:
                until = time.monotonic() + 6.0
                workers = [asyncio.create_task(load.worker(i, until)) for i in range(CONCURRENCY)]
                await asyncio.sleep(2.0)
                before_kill = dict(load.served_by)
                first.proc.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                ok_at_kill = load.ok
                await asyncio.gather(*workers)
            finally:
                await load.close()
            # The registry forgets the dead instance when its 2 s lease runs out.
            await discovery.wait_for(lambda found: len(found) == 1, timeout=5)
            assert time.monotonic() - killed_at < 5

        assert load.failures == [], load.failures[:5]
        assert before_kill.get(first.address, 0) > 0 and before_kill.get(second.address, 0) > 0
        assert load.ok - ok_at_kill > 10, "logins must go on at the surviving instance"
        assert first.proc.wait(5) == -signal.SIGKILL
        print(
            f"{db.backend}: {load.ok} logins, 0 failed, {load.retried} retried on the other instance; "
            f"served {load.served_by}"
        )
