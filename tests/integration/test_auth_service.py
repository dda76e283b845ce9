"""The auth service on a real port, against real SQLite and PostgreSQL: flows and attacks."""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from auth_svc.config import AuthConfig
from auth_svc.server import SERVICE_NAME, AuthInstance
from auth_svc.store import StoreError
from mesh import errors
from mesh.token_verify import TokenVerifier
from tests.integration import prometheus_text
from tests.integration.auth_fixtures import fast_config
from tests.integration.pg_fixtures import BACKENDS, Database, database
from tests.integration.rpc_status import bearer, code, refused

T = TypeVar("T")
PASSWORD = "correct horse battery"


class Clock:
    """Wall time that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def config_for(db: Database, **over: Any) -> AuthConfig:
    return fast_config(db.url, db_schema=db.schema, **over)


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as target:
        yield target


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def instance(db: Database, clock: Clock) -> AsyncIterator[AuthInstance]:
    async with AuthInstance(config_for(db, throttle_user_failures=3), clock=clock) as inst:
        yield inst


@pytest.fixture
async def stub(instance: AuthInstance) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    async with grpc.aio.insecure_channel(instance.address) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


async def register(stub: auth_pb2_grpc.AuthServiceStub, name: str) -> auth_pb2.RegisterResponse:
    return await stub.Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD))


async def login(
    stub: auth_pb2_grpc.AuthServiceStub, name: str, password: str = PASSWORD
) -> auth_pb2.LoginResponse:
    return await stub.Login(auth_pb2.LoginRequest(username=name, password=password))


async def test_register_login_whoami_refresh_logout(
    stub: auth_pb2_grpc.AuthServiceStub, instance: AuthInstance
) -> None:
    created = await register(stub, "Alice.Smith")
    assert created.user.username == "alice.smith"
    logged = await login(stub, "ALICE.SMITH")
    assert logged.user.user_id == created.user.user_id
    assert logged.tokens.token_type == "Bearer"
    assert logged.tokens.refresh_token.startswith("ocrr_")
    lifetime = logged.tokens.access_expires_at.seconds - time.time()
    assert 880 < lifetime <= 900

    me = await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(logged.tokens.access_token))
    assert me.user.username == "alice.smith" and me.token_id
    status = await refused(stub.WhoAmI(auth_pb2.WhoAmIRequest()))
    assert code(status) == grpc.StatusCode.UNAUTHENTICATED
    assert errors.error_reason(status) == "TOKEN_MISSING"

    renewed = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=logged.tokens.refresh_token))
    assert renewed.tokens.refresh_token != logged.tokens.refresh_token
    await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(renewed.tokens.access_token))

    out = await stub.Logout(auth_pb2.LogoutRequest(refresh_token=renewed.tokens.refresh_token))
    assert out.revoked_sessions == 1
    status = await refused(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=renewed.tokens.refresh_token)))
    assert errors.error_reason(status) == "REFRESH_REVOKED"


async def test_logout_all_sessions(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    await register(stub, "multi")
    sessions = [await login(stub, "multi") for _ in range(3)]
    out = await stub.Logout(
        auth_pb2.LogoutRequest(refresh_token=sessions[0].tokens.refresh_token, all_sessions=True)
    )
    assert out.revoked_sessions == 3
    for s in sessions:
        status = await refused(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=s.tokens.refresh_token)))
        assert code(status) == grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_reuse_revokes_the_family(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    await register(stub, "victim")
    stolen = (await login(stub, "victim")).tokens.refresh_token
    other_session = (await login(stub, "victim")).tokens.refresh_token
    newer = (await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=stolen))).tokens
    newest = (await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=newer.refresh_token))).tokens

    status = await refused(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=stolen)))
    assert code(status) == grpc.StatusCode.UNAUTHENTICATED
    assert errors.error_reason(status) == "REFRESH_REUSED"
    status = await refused(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=newest.refresh_token)))
    assert errors.error_reason(status) == "REFRESH_REVOKED"  # the newer token stopped working too
    # Another login (another family) is untouched.
    await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=other_session))

    for junk in ("", "ocrr_nope", "x" * 5000):
        status = await refused(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=junk)))
        assert errors.error_reason(status) == "REFRESH_INVALID"


async def test_concurrent_refresh_gives_one_winner(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    await register(stub, "racer")
    token = (await login(stub, "racer")).tokens.refresh_token
    results = await asyncio.gather(
        *(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token)) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, auth_pb2.RefreshResponse) for r in results) == 1
    assert all(
        r.code() == grpc.StatusCode.UNAUTHENTICATED for r in results if isinstance(r, grpc.aio.AioRpcError)
    )


async def test_password_shape_errors(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    status = await refused(stub.Register(auth_pb2.RegisterRequest(username="longpw", password="a" * 73)))
    assert code(status) == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = errors.field_violations(status)
    assert violation.field == "password" and "72 bytes" in violation.description
    assert violation.reason == "PASSWORD_TOO_LONG"

    status = await refused(stub.Register(auth_pb2.RegisterRequest(username="x", password="short")))
    assert {v.field for v in errors.field_violations(status)} == {"username", "password"}

    await register(stub, "longpw")
    status = await refused(login(stub, "longpw", "a" * 73))
    assert code(status) == grpc.StatusCode.INVALID_ARGUMENT


async def test_injection_looking_names_are_refused_and_users_survive(
    stub: auth_pb2_grpc.AuthServiceStub, instance: AuthInstance
) -> None:
    await register(stub, "admin")
    for name in ("admin'--", "x'; DROP TABLE users;--", "' OR '1'='1"):
        status = await refused(register(stub, name))
        assert code(status) == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in errors.field_violations(status)] == ["username"]
        status = await refused(login(stub, name))
        assert code(status) == grpc.StatusCode.UNAUTHENTICATED
        assert status.message == "wrong user name or password"
    assert await instance.store.count_users() == 1
    await login(stub, "admin")


async def test_concurrent_duplicate_registration(
    stub: auth_pb2_grpc.AuthServiceStub, instance: AuthInstance
) -> None:
    results = await asyncio.gather(*(register(stub, "Twin") for _ in range(10)), return_exceptions=True)
    winners = [r for r in results if isinstance(r, auth_pb2.RegisterResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 9
    assert {e.code() for e in losers} == {grpc.StatusCode.ALREADY_EXISTS}
    assert await instance.store.count_users() == 1
    status = await refused(register(stub, "ＴＷＩＮ"))  # the same name after NFKC + case folding
    assert code(status) == grpc.StatusCode.ALREADY_EXISTS


async def test_a_taken_name_costs_a_password_hash_like_a_free_one(
    stub: auth_pb2_grpc.AuthServiceStub, instance: AuthInstance
) -> None:
    """Enumeration by Register costs what a login costs: the answer for a taken name comes after
    the same bcrypt hash as a new account's (counted by the password-time histogram)."""

    def hashes() -> float:
        return instance.metrics.registry.get_sample_value("ocrmesh_auth_password_seconds_count") or 0.0

    await register(stub, "enumerated")
    before = hashes()
    status = await refused(register(stub, "enumerated"))
    assert code(status) == grpc.StatusCode.ALREADY_EXISTS
    assert hashes() == before + 1


async def test_brute_force_is_throttled(stub: auth_pb2_grpc.AuthServiceStub, clock: Clock) -> None:
    await register(stub, "target")
    for _ in range(3):
        status = await refused(login(stub, "target", "wrong password"))
        assert code(status) == grpc.StatusCode.UNAUTHENTICATED
    status = await refused(login(stub, "target", "wrong password"))
    assert code(status) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.error_reason(status) == "LOGIN_THROTTLED"
    assert errors.retry_delay_s(status) == pytest.approx(1.0, abs=0.1)
    # Even the right password waits out the lockout.
    status = await refused(login(stub, "target"))
    assert code(status) == grpc.StatusCode.RESOURCE_EXHAUSTED
    clock.offset += 1.0
    status = await refused(login(stub, "target", "wrong again!"))
    assert code(status) == grpc.StatusCode.UNAUTHENTICATED
    status = await refused(login(stub, "target"))
    assert errors.retry_delay_s(status) == pytest.approx(2.0, abs=0.1)  # doubled
    clock.offset += 2.0
    await login(stub, "target")


async def test_parallel_guesses_get_no_extra_tries(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    await register(stub, "parallel")
    results = await asyncio.gather(
        *(login(stub, "parallel", f"guess number {i}") for i in range(12)), return_exceptions=True
    )
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(codes) == 12
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 3
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 9
    status = await refused(login(stub, "parallel"))
    assert errors.error_reason(status) == "LOGIN_THROTTLED"  # three failures: locked


async def test_many_users_log_in_at_once_from_one_address(
    stub: auth_pb2_grpc.AuthServiceStub,
) -> None:
    names = [f"crowd{i}" for i in range(40)]
    await asyncio.gather(*(register(stub, name) for name in names))
    done = await asyncio.gather(*(login(stub, name) for name in names))
    assert len({d.user.user_id for d in done}) == 40


async def test_per_address_throttle(db: Database) -> None:
    config = config_for(db, throttle_address_failures=4)
    async with AuthInstance(config) as inst, grpc.aio.insecure_channel(inst.address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for i in range(4):
            status = await refused(login(stub, f"nobody{i}", "wrong password"))
            assert code(status) == grpc.StatusCode.UNAUTHENTICATED
        status = await refused(login(stub, "somebody-new", "wrong password"))
        assert code(status) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unknown_user_and_wrong_password_look_the_same(tmp_path: Path) -> None:
    db = Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    config = config_for(db, bcrypt_cost=10, throttle_user_failures=50, throttle_address_failures=50)
    async with AuthInstance(config) as inst, grpc.aio.insecure_channel(inst.address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        await register(stub, "known")
        times: dict[str, list[float]] = {"known": [], "unknown": []}
        answers = set()
        for _ in range(4):
            for name in ("known", "unknown"):
                started = time.perf_counter()
                status = await refused(login(stub, name, "not the password"))
                times[name].append(time.perf_counter() - started)
                answers.add((status.code, status.message, errors.error_reason(status)))
        assert len(answers) == 1
        ratio = statistics.median(times["unknown"]) / statistics.median(times["known"])
        assert 0.6 < ratio < 1.6, times


async def test_key_rotation_keeps_old_tokens_valid(
    stub: auth_pb2_grpc.AuthServiceStub, instance: AuthInstance
) -> None:
    await register(stub, "rotor")
    old = (await login(stub, "rotor")).tokens.access_token
    old_kid = instance.keyring.signer().kid
    new_key = await instance.keyring.rotate(publish_ahead_s=0)
    new = (await login(stub, "rotor")).tokens.access_token
    jwks = await stub.GetJwks(auth_pb2.GetJwksRequest())
    assert [k.kid for k in jwks.keys] == [old_kid, new_key.kid]
    assert all(k.alg == "ES256" and k.kty == "EC" and k.crv == "P-256" for k in jwks.keys)

    verifier = TokenVerifier(jwks.jwks_json, issuer="ocrmesh-auth", audience="ocrmesh")
    import jwt

    assert jwt.get_unverified_header(old)["kid"] == old_kid
    assert jwt.get_unverified_header(new)["kid"] == new_key.kid
    assert verifier.verify(old)["sub"] == verifier.verify(new)["sub"]
    for token in (old, new):
        await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token))


async def test_expired_access_token(stub: auth_pb2_grpc.AuthServiceStub, clock: Clock) -> None:
    await register(stub, "sleepy")
    token = (await login(stub, "sleepy")).tokens.access_token
    clock.offset += 900 + 31
    status = await refused(stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token)))
    assert code(status) == grpc.StatusCode.UNAUTHENTICATED
    assert errors.error_reason(status) == "TOKEN_EXPIRED"
    assert "expired" in status.message


async def test_restart_keeps_keys_and_accounts(db: Database) -> None:
    published: list[dict[str, Any]] = []

    async def on_keys_changed(jwks: dict[str, Any]) -> None:
        published.append(jwks)

    config = config_for(db)
    async with AuthInstance(config, on_keys_changed=on_keys_changed) as first:
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            await register(stub, "keeper")
            token = (await login(stub, "keeper")).tokens.access_token
        kid = first.keyring.signer().kid
    assert [k["kid"] for k in published[0]["keys"]] == [kid]
    async with AuthInstance(config) as second:
        assert second.keyring.signer().kid == kid
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            me = await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token))
            assert me.user.username == "keeper"
            await login(stub, "keeper")


async def test_health_reflection_and_metrics(db: Database) -> None:
    config = config_for(db, metrics_port=0)
    async with AuthInstance(config) as inst, grpc.aio.insecure_channel(inst.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        # A short load touching every method once, and one refusal.
        await register(stub, "metered")
        tokens = (await login(stub, "metered")).tokens
        await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(tokens.access_token))
        await refused(stub.WhoAmI(auth_pb2.WhoAmIRequest()))
        tokens = (await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=tokens.refresh_token))).tokens
        await stub.GetJwks(auth_pb2.GetJwksRequest())
        await stub.Logout(auth_pb2.LogoutRequest(refresh_token=tokens.refresh_token))
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(inst.metrics_url, timeout=5).read().decode()
        )
        assert 'ocrmesh_auth_outcomes_total{action="register",outcome="ok"} 1.0' in text
        assert "ocrmesh_auth_jwks_keys 1.0" in text
    metrics = prometheus_text.parse(text)  # prometheus_client's parser: raises on a malformed page
    assert metrics.empty_families() == [], "declared metrics without a sample after the load"
    for method in ("Register", "Login", "Refresh", "Logout", "WhoAmI", "GetJwks"):
        assert metrics.value("ocrmesh_auth_requests_total", method=method, code="OK") >= 1, method
    assert metrics.value("ocrmesh_auth_requests_total", method="WhoAmI", code="UNAUTHENTICATED") == 1
    assert metrics.value("ocrmesh_auth_password_seconds_count") >= 2  # register + login
    assert all(len(help_text) >= 30 for help_text in metrics.help.values()), metrics.help
    assert inst.health.serving is False


async def test_not_serving_until_the_store_is_ready() -> None:
    config = AuthConfig(
        port=0,
        db_url="postgresql+asyncpg://postgres@127.0.0.1:1/test",
        db_wait_s=1.5,
        metrics_port=-1,
        bcrypt_cost=4,
    )
    inst = AuthInstance(config)
    starting = asyncio.create_task(inst.start())
    for _ in range(500):  # start() binds the port before it reaches the database
        if inst.address:
            break
        await asyncio.sleep(0.01)
    async with grpc.aio.insecure_channel(inst.address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(StoreError, match="gave up"):
        await starting
