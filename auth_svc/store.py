"""The auth database (SQLite or PostgreSQL): tables, versioned migrations and every query.

SQLAlchemy 2 async Core, parameterised statements only. SQLite runs in WAL mode with a busy
timeout, and writes take the lock up front (BEGIN IMMEDIATE) so concurrent writers wait instead
of failing. Unique user names are enforced by the database itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from auth_svc.throttle import Attempts

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
_WRITE = "ocrmesh_write"
_SQLITE_BUSY_TIMEOUT_MS = 10_000
# Any constant works: pg_advisory_xact_lock serialises concurrent migrations across instances.
_PG_MIGRATION_LOCK = 0x6F63726D61757468

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("password_hash", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.UniqueConstraint("username", name="uq_users_username"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    # sha256 of the token: the token itself is never stored.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("family_id", sa.String(36), nullable=False, index=True),
    sa.Column(
        "user_id",
        sa.String(36),
        sa.ForeignKey("users.user_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("issued_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False, index=True),
    sa.Column("used_at", sa.Double, nullable=True),
    sa.Column("revoked_at", sa.Double, nullable=True),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_pem", sa.Text, nullable=False),
    sa.Column("public_jwk", sa.Text, nullable=False),
    sa.Column("encrypted", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("activates_at", sa.Double, nullable=False),
)


def _migrate_to_1(conn: Connection) -> None:
    for table in (users, refresh_tokens, signing_keys):
        table.create(conn, checkfirst=True)


revoked_at_index = sa.Index("ix_refresh_tokens_revoked_at", refresh_tokens.c.revoked_at)


def _migrate_to_2(conn: Connection) -> None:
    # Auth instances read the families revoked lately every second to publish them (revocations.py).
    revoked_at_index.create(conn, checkfirst=True)


throttle_entries = sa.Table(
    "throttle_entries",
    metadata,
    # "user:<name>", "addr:<address>" or "reg:<address>" (throttle.py): one row per key with recent failures.
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.Double, nullable=False),
    sa.Column("last_failure", sa.Double, nullable=False, index=True),
)


def _migrate_to_3(conn: Connection) -> None:
    # Login and registration throttles shared by every auth instance, surviving restarts.
    throttle_entries.create(conn, checkfirst=True)


# (version, step): each step brings the schema from version-1 to version, inside one transaction.
MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _migrate_to_1),
    (2, _migrate_to_2),
    (3, _migrate_to_3),
)


class StoreError(Exception):
    """The database cannot be used as it is (e.g. its schema is newer than this build)."""


class StoreUnavailable(StoreError):
    """The database did not answer (down, unreachable, locked too long); worth retrying."""


class UsernameTaken(Exception):
    """A user with this (normalised) name exists already."""


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    username: str
    password_hash: str
    created_at: float


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    family_id: str
    user_id: str
    issued_at: float
    expires_at: float
    used_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    private_pem: str
    public_jwk: str
    encrypted: bool
    created_at: float
    activates_at: float


_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, TimeoutError)


@contextmanager
def _translated() -> Iterator[None]:
    """Driver errors as StoreUnavailable (retry) or StoreError; IntegrityError passes through."""
    try:
        yield
    except sa.exc.IntegrityError:
        raise
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
    except sa.exc.DBAPIError as exc:
        raise StoreError(f"database error: {type(exc.orig).__name__}") from exc


def _user(row: sa.Row[Any]) -> UserRecord:
    return UserRecord(row.user_id, row.username, row.password_hash, row.created_at)


def _refresh(row: sa.Row[Any]) -> RefreshRecord:
    return RefreshRecord(
        row.token_hash,
        row.family_id,
        row.user_id,
        row.issued_at,
        row.expires_at,
        row.used_at,
        row.revoked_at,
    )


def _sqlite_file(url: sa.URL) -> Path | None:
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _owner_only(path: Path) -> None:
    """Create the database file readable by its owner alone (0600), or make an existing one so:
    it holds password hashes and signing keys. SQLite gives its -wal and -shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)


def _prepare_sqlite(engine: AsyncEngine) -> None:
    """Busy timeout, foreign keys; and BEGIN issued by us (IMMEDIATE for writes)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's implicit BEGINs off: we send our own
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class AuthStore:
    """Users, refresh tokens and signing keys in one SQL database; safe for many instances."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.backend = engine.dialect.name
        self._file = self.backend == "sqlite" and _sqlite_file(engine.url) is not None

    @classmethod
    def open(cls, url: str, *, schema: str = "") -> AuthStore:
        """An engine for `url` (no connection yet); `schema` sets PostgreSQL's search_path."""
        parsed = sa.make_url(url)
        backend = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if backend == "sqlite":
            if schema:
                raise StoreError("a schema can only be chosen on PostgreSQL")
            path = _sqlite_file(parsed)
            if path is not None:
                _owner_only(path.expanduser())
        elif backend == "postgresql":
            kwargs["pool_pre_ping"] = True
            if schema:
                if parsed.get_driver_name() != "asyncpg":
                    raise StoreError("--db-schema needs the postgresql+asyncpg driver")
                kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        else:
            raise StoreError(f"unsupported database {backend!r}: use sqlite or postgresql")
        try:
            engine = create_async_engine(parsed, **kwargs)
        except (ImportError, sa.exc.ArgumentError) as exc:
            raise StoreError(f"cannot use database URL: {exc}") from None
        if backend == "sqlite":
            _prepare_sqlite(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with _translated():
            async with self.engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        with _translated():
            async with self.engine.connect() as conn:
                await conn.execution_options(**{_WRITE: True})
                async with conn.begin():
                    yield conn

    # -- schema ---------------------------------------------------------------------------

    async def _use_wal(self) -> None:
        """Put a SQLite file in WAL mode (persistent; readers then never block the writer).

        Done once, outside any transaction, and retried: the switch needs an exclusive lock and
        SQLite answers "locked" at once, without waiting, if another connection could deadlock.
        """
        for attempt in range(40):
            try:
                with _translated():
                    async with self.engine.connect() as conn:
                        raw = await conn.get_raw_connection()
                        driver: Any = raw.driver_connection
                        async with driver.execute("PRAGMA journal_mode") as cursor:
                            row = await cursor.fetchone()
                        if row and str(row[0]).lower() != "wal":
                            await driver.execute("PRAGMA journal_mode=WAL")
                return
            except (StoreUnavailable, sqlite3.OperationalError) as exc:
                if attempt == 39:
                    raise StoreUnavailable(f"cannot switch SQLite to WAL: {exc}") from exc
                await asyncio.sleep(min(0.5, 0.02 * (attempt + 1)))

    async def migrate(self, now: float) -> int:
        """Create or upgrade the schema to SCHEMA_VERSION; returns the version found before."""
        if self.backend == "sqlite" and self._file:
            await self._use_wal()
        async with self._write() as conn:
            if self.backend == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.literal(_PG_MIGRATION_LOCK))))
            await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
            found = (await conn.execute(sa.select(sa.func.max(schema_version.c.version)))).scalar()
            before = int(found or 0)
            if before > SCHEMA_VERSION:
                raise StoreError(
                    f"the database schema is version {before}, newer than this build "
                    f"understands ({SCHEMA_VERSION}); upgrade ocrmesh"
                )
            for version, step in MIGRATIONS:
                if version > before:
                    await conn.run_sync(step)
                    await conn.execute(schema_version.insert().values(version=version, applied_at=now))
                    log.info("auth schema migrated", extra={"schema_version": version})
        return before

    async def version(self) -> int:
        async with self._read() as conn:
            found = await conn.execute(sa.select(sa.func.max(schema_version.c.version)))
            return int(found.scalar() or 0)

    # -- users ----------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> UserRecord:
        """Insert a user; UsernameTaken when the name exists (also under a concurrent race)."""
        try:
            async with self._write() as conn:
                await conn.execute(
                    users.insert().values(
                        user_id=user.user_id,
                        username=user.username,
                        password_hash=user.password_hash,
                        created_at=user.created_at,
                    )
                )
        except sa.exc.IntegrityError:
            raise UsernameTaken(user.username) from None
        return user

    async def user_by_name(self, username: str) -> UserRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.username == username))).first()
        return _user(row) if row else None

    async def user_by_id(self, user_id: str) -> UserRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.user_id == user_id))).first()
        return _user(row) if row else None

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                users.update().where(users.c.user_id == user_id).values(password_hash=password_hash)
            )

    async def count_users(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one())

    # -- refresh tokens -------------------------------------------------------------------

    async def add_refresh_token(self, record: RefreshRecord) -> None:
        async with self._write() as conn:
            await conn.execute(refresh_tokens.insert().values(**_refresh_values(record)))

    async def refresh_token(self, token_hash: str) -> RefreshRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash))
            ).first()
        return _refresh(row) if row else None

    async def exchange_refresh_token(
        self, token_hash: str, replacement: RefreshRecord, now: float
    ) -> RefreshRecord | None:
        """Atomically use up a live token and store its replacement in the same family.

        Returns the used token, or None when it is unknown, used, revoked or expired (then
        nothing changes). The conditional UPDATE lets exactly one of two racing calls win.
        """
        t = refresh_tokens.c
        async with self._write() as conn:
            claimed = (
                await conn.execute(
                    refresh_tokens.update()
                    .where(
                        t.token_hash == token_hash,
                        t.used_at.is_(None),
                        t.revoked_at.is_(None),
                        t.expires_at > now,
                    )
                    .values(used_at=now)
                    .returning(*refresh_tokens.c)
                )
            ).first()
            if claimed is None:
                return None
            used = _refresh(claimed)
            values = _refresh_values(replacement)
            values.update(family_id=used.family_id, user_id=used.user_id)
            await conn.execute(refresh_tokens.insert().values(**values))
        return used

    async def revoke_family(self, family_id: str, now: float) -> int:
        """Revoke every live token of a family; returns 1 if anything was live, else 0."""
        t = refresh_tokens.c
        async with self._write() as conn:
            done = await conn.execute(
                refresh_tokens.update()
                .where(t.family_id == family_id, t.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return 1 if done.rowcount else 0

    async def revoke_user(self, user_id: str, now: float) -> int:
        """Revoke every family of a user; returns how many families had unrevoked tokens."""
        t = refresh_tokens.c
        live = sa.and_(t.user_id == user_id, t.revoked_at.is_(None))
        async with self._write() as conn:
            families = (
                await conn.execute(sa.select(sa.func.count(sa.distinct(t.family_id))).where(live))
            ).scalar_one()
            await conn.execute(refresh_tokens.update().where(live).values(revoked_at=now))
        return int(families)

    async def families_revoked_since(self, cutoff: float) -> dict[str, float]:
        """family id -> when it was revoked, for every family revoked at or after `cutoff`."""
        t = refresh_tokens.c
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(t.family_id, sa.func.max(t.revoked_at))
                .where(t.revoked_at >= cutoff)
                .group_by(t.family_id)
            )
            return {str(family): float(at) for family, at in rows}

    async def delete_refresh_tokens_expired_before(self, cutoff: float) -> int:
        """Housekeeping: drop tokens that expired before `cutoff`."""
        async with self._write() as conn:
            done = await conn.execute(refresh_tokens.delete().where(refresh_tokens.c.expires_at < cutoff))
        return int(done.rowcount or 0)

    # -- throttle -------------------------------------------------------------------------

    async def throttle_entries(self, keys: Sequence[str]) -> dict[str, Attempts]:
        """The recorded failures of those `keys` that have any."""
        t = throttle_entries.c
        async with self._read() as conn:
            rows = await conn.execute(sa.select(throttle_entries).where(t.key.in_(list(keys))))
            return {row.key: Attempts(row.failures, row.locked_until, row.last_failure) for row in rows}

    async def change_throttle_entry(self, key: str, change: Callable[[Attempts], Attempts]) -> Attempts:
        """Apply `change` to `key`'s failures in one transaction (instances race for one key: the
        row is locked, FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite), and store the result."""
        t = throttle_entries.c
        insert = sqlite_insert if self.backend == "sqlite" else pg_insert
        async with self._write() as conn:
            await conn.execute(
                insert(throttle_entries)
                .values(key=key, failures=0, locked_until=0.0, last_failure=0.0)
                .on_conflict_do_nothing()
            )
            query = sa.select(throttle_entries).where(t.key == key)
            if self.backend == "postgresql":
                query = query.with_for_update()
            row = (await conn.execute(query)).one()
            changed = change(Attempts(row.failures, row.locked_until, row.last_failure))
            await conn.execute(
                throttle_entries.update()
                .where(t.key == key)
                .values(
                    failures=changed.failures,
                    locked_until=changed.locked_until,
                    last_failure=changed.last_failure,
                )
            )
        return changed

    async def forget_throttle_entry(self, key: str) -> None:
        async with self._write() as conn:
            await conn.execute(throttle_entries.delete().where(throttle_entries.c.key == key))

    async def delete_throttle_entries_before(self, cutoff: float) -> int:
        """Housekeeping: drop keys whose last failure is older than `cutoff` (they start afresh anyway)."""
        async with self._write() as conn:
            done = await conn.execute(
                throttle_entries.delete().where(throttle_entries.c.last_failure < cutoff)
            )
        return int(done.rowcount or 0)

    async def count_throttle_entries(self) -> int:
        async with self._read() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(throttle_entries))).scalar_one()
            )

    # -- signing keys ---------------------------------------------------------------------

    async def add_signing_key(self, record: KeyRecord) -> None:
        async with self._write() as conn:
            await conn.execute(
                signing_keys.insert().values(
                    kid=record.kid,
                    private_pem=record.private_pem,
                    public_jwk=record.public_jwk,
                    encrypted=record.encrypted,
                    created_at=record.created_at,
                    activates_at=record.activates_at,
                )
            )

    async def signing_keys(self) -> list[KeyRecord]:
        async with self._read() as conn:
            rows = await conn.execute(sa.select(signing_keys).order_by(signing_keys.c.activates_at))
            return [
                KeyRecord(
                    r.kid,
                    r.private_pem,
                    r.public_jwk,
                    bool(r.encrypted),
                    r.created_at,
                    r.activates_at,
                )
                for r in rows
            ]

    async def delete_signing_keys(self, kids: Sequence[str]) -> None:
        if not kids:
            return
        async with self._write() as conn:
            await conn.execute(signing_keys.delete().where(signing_keys.c.kid.in_(list(kids))))


def _refresh_values(record: RefreshRecord) -> dict[str, Any]:
    return {
        "token_hash": record.token_hash,
        "family_id": record.family_id,
        "user_id": record.user_id,
        "issued_at": record.issued_at,
        "expires_at": record.expires_at,
        "used_at": record.used_at,
        "revoked_at": record.revoked_at,
    }
