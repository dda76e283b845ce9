"""Throwaway databases for store-backed tests: a SQLite file, or a fresh PostgreSQL schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

PG_URL = os.environ.get("OCRMESH_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Database:
    """Where a test's data lives: a URL, and for PostgreSQL the schema made for this test."""

    backend: str
    url: str
    schema: str = ""


@asynccontextmanager
async def pg_schema() -> AsyncIterator[Database]:
    """A new schema `auth_test_<random>` in the test database, dropped (cascade) afterwards."""
    name = f"auth_test_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(PG_URL, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    except (OSError, TimeoutError, sa.exc.SQLAlchemyError) as exc:
        await engine.dispose()
        pytest.fail(
            f"PostgreSQL is required for these tests and is not reachable at {PG_URL} "
            f"({type(exc).__name__}: {exc}). Start it, or point OCRMESH_TEST_PG_URL at one.",
            pytrace=False,
        )
    try:
        yield Database("postgresql", PG_URL, name)
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        await engine.dispose()


@asynccontextmanager
async def database(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A throwaway database of `backend` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
        return
    async with pg_schema() as db:
        yield db
