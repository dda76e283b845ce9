"""The auth store on real SQLite and PostgreSQL: migrations, unique names, atomic refresh, keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from auth_svc.keys import KeyRing, jwks_document
from auth_svc.store import (
    SCHEMA_VERSION,
    AuthStore,
    RefreshRecord,
    StoreError,
    StoreUnavailable,
    UsernameTaken,
    UserRecord,
)
from tests.integration.pg_fixtures import BACKENDS, Database, database

NOW = 1_800_000_000.0


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as target:
        yield target


@pytest.fixture
async def store(db: Database) -> AsyncIterator[AuthStore]:
    opened = AuthStore.open(db.url, schema=db.schema)
    await opened.migrate(NOW)
    yield opened
    await opened.close()


def user(name: str) -> UserRecord:
    return UserRecord(uuid.uuid4().hex, name, "$2b$04$" + "x" * 53, NOW)


async def test_migrations_are_versioned_and_idempotent(db: Database) -> None:
    stores = [AuthStore.open(db.url, schema=db.schema) for _ in range(3)]
    try:
        # Three instances starting at once on an empty database.
        before = await asyncio.gather(*(s.migrate(NOW) for s in stores))
        assert 0 in before and set(before) <= {0, SCHEMA_VERSION}
        assert await stores[0].version() == SCHEMA_VERSION
        assert await stores[1].migrate(NOW) == SCHEMA_VERSION
        async with stores[0].engine.begin() as conn:
            await conn.execute(sa.text("INSERT INTO schema_version VALUES (99, 0)"))
        with pytest.raises(StoreError, match="newer"):
            await stores[2].migrate(NOW)
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_duplicate_users_one_wins(store: AuthStore) -> None:
    results = await asyncio.gather(*(store.add_user(user("dup")) for _ in range(10)), return_exceptions=True)
    assert sum(isinstance(r, UserRecord) for r in results) == 1
    assert sum(isinstance(r, UsernameTaken) for r in results) == 9
    assert await store.count_users() == 1


async def test_injection_text_is_stored_literally(store: AuthStore) -> None:
    for name in ("admin'--", "x'; DROP TABLE users;--", "' OR '1'='1"):
        await store.add_user(user(name))
        found = await store.user_by_name(name)
        assert found is not None and found.username == name
    assert await store.user_by_name("admin") is None
    assert await store.count_users() == 3


async def test_refresh_exchange_is_atomic(store: AuthStore) -> None:
    owner = await store.add_user(user("alice"))
    first = RefreshRecord("h0", "fam", owner.user_id, NOW, NOW + 100)
    await store.add_refresh_token(first)
    nexts = [RefreshRecord(f"h{i}", "ignored", "ignored", NOW, NOW + 100) for i in range(1, 9)]
    won = await asyncio.gather(*(store.exchange_refresh_token("h0", n, NOW) for n in nexts))
    assert sum(w is not None for w in won) == 1
    winner = nexts[[w is not None for w in won].index(True)]
    stored = await store.refresh_token(winner.token_hash)
    assert stored is not None and stored.family_id == "fam" and stored.user_id == owner.user_id
    assert await store.exchange_refresh_token("h0", nexts[0], NOW) is None  # used
    assert await store.revoke_family("fam", NOW) == 1
    assert await store.exchange_refresh_token(winner.token_hash, nexts[0], NOW) is None
    late = RefreshRecord("late", "fam2", owner.user_id, NOW, NOW + 1)
    await store.add_refresh_token(late)
    assert await store.exchange_refresh_token("late", nexts[1], NOW + 2) is None  # expired
    await store.add_refresh_token(RefreshRecord("other", "fam3", owner.user_id, NOW, NOW + 9))
    assert await store.revoke_user(owner.user_id, NOW) == 2  # fam2 and fam3 were live
    assert await store.delete_refresh_tokens_expired_before(NOW + 50) == 2


async def test_keyring_persists_rotates_and_prunes(db: Database) -> None:
    clock = [NOW]
    seen: list[list[str]] = []

    async def listener(jwks: dict[str, list[dict[str, str]]]) -> None:
        seen.append([k["kid"] for k in jwks["keys"]])

    stores = [AuthStore.open(db.url, schema=db.schema) for _ in range(2)]
    try:
        await stores[0].migrate(NOW)
        rings = [
            KeyRing(
                s,
                clock=lambda: clock[0],
                rotate_after_s=1000.0,
                publish_ahead_s=60.0,
                keep_after_retire_s=100.0,
                passphrase=b"pass phrase",
            )
            for s in stores
        ]
        rings[0].add_listener(listener)
        await rings[0].sync()
        await rings[1].sync()  # a second instance loads the same key
        first = rings[0].signer().kid
        assert rings[1].signer().kid == first and seen == [[first]]
        clock[0] += 1000.0  # rotation due: the new key is published ahead, not signing yet
        await rings[0].sync()
        second = rings[0].keys[-1].kid
        assert second != first and rings[0].signer().kid == first
        assert seen[-1] == [first, second]
        await rings[1].sync()
        assert jwks_document(rings[1].keys) == rings[0].jwks()
        clock[0] += 60.0
        assert rings[0].signer().kid == second == rings[1].signer().kid
        clock[0] += 100.0  # the old key's tokens have all expired: pruned
        await rings[0].sync()
        assert seen[-1] == [second]
        await rings[1].sync()
        assert [k.kid for k in rings[1].keys] == [second]
    finally:
        for s in stores:
            await s.close()


async def test_unreachable_database_is_unavailable() -> None:
    store = AuthStore.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(StoreUnavailable):
            await store.migrate(NOW)
    finally:
        await store.close()
