"""Password rules and bcrypt hashing in a bounded thread pool, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import secrets
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import bcrypt

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PASSWORD_BYTES = 8
# bcrypt reads only 72 bytes (bcrypt 5 raises beyond): refuse longer ones rather than truncate.
MAX_PASSWORD_BYTES = 72


class PasswordRejected(ValueError):
    """A password that breaks the rules; `description` is safe to show the user."""

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason


class HasherBusy(Exception):
    """Too many password hashes/checks are already waiting; come back after `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"password hashing is saturated; retry in {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s


def password_bytes(password: str, *, for_login: bool = False) -> bytes:
    """The bytes bcrypt sees: NFKC-normalised UTF-8, 8-72 bytes (login only checks the maximum)."""
    normalised = unicodedata.normalize("NFKC", password)
    if "\x00" in normalised:
        raise PasswordRejected("must not contain NUL characters", "PASSWORD_NUL")
    try:
        data = normalised.encode("utf-8")
    except UnicodeEncodeError:
        raise PasswordRejected("must be valid Unicode text", "PASSWORD_ENCODING") from None
    if len(data) > MAX_PASSWORD_BYTES:
        raise PasswordRejected(
            f"must be at most {MAX_PASSWORD_BYTES} bytes of UTF-8 (got {len(data)})",
            "PASSWORD_TOO_LONG",
        )
    if for_login:
        if not data:
            raise PasswordRejected("must not be empty", "PASSWORD_EMPTY")
    elif len(data) < MIN_PASSWORD_BYTES:
        raise PasswordRejected(
            f"must be at least {MIN_PASSWORD_BYTES} bytes of UTF-8 (got {len(data)})",
            "PASSWORD_TOO_SHORT",
        )
    return data


def hash_cost(hashed: str) -> int | None:
    """The work factor written in a bcrypt hash ("$2b$12$..." -> 12), or None if unreadable."""
    parts = hashed.split("$")
    if len(parts) < 4 or not parts[2].isdigit():
        return None
    return int(parts[2])


def _hash_sync(password: bytes, cost: int) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode("ascii")


def _check_sync(password: bytes, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password, hashed.encode("ascii"))
    except ValueError:
        log.error("stored password hash is malformed; treating the check as failed")
        return False


class PasswordHasher:
    """bcrypt in `concurrency` threads (bcrypt releases the GIL) with a bounded waiting line.

    A login storm fills the line and is then refused with HasherBusy instead of queueing
    without limit; the event loop stays free for every other RPC. Unknown users are checked
    against a dummy hash of the same cost, so they take as long as a wrong password.
    """

    def __init__(self, cost: int = 12, concurrency: int = 1, max_waiting: int = 256) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.cost = cost
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bcrypt")
        self._pending = 0
        self._dummy: str | None = None
        self._seconds_per_hash = 0.25

    @property
    def pending(self) -> int:
        """Hashes/checks running or waiting."""
        return self._pending

    async def start(self) -> None:
        """Make the dummy hash (and measure the cost once) before serving."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._dummy = await self.hash(secrets.token_bytes(32).hex()[:40].encode())
        self._seconds_per_hash = max(0.001, loop.time() - started)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pending >= self.concurrency + self.max_waiting:
            waves = self._pending / self.concurrency
            raise HasherBusy(round(max(0.1, waves * self._seconds_per_hash), 1))
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, fn, *args)
        finally:
            self._pending -= 1

    async def hash(self, password: bytes) -> str:
        """A new bcrypt hash of `password` at this hasher's cost."""
        return await self._run(_hash_sync, password, self.cost)

    async def check(self, password: bytes, hashed: str | None) -> bool:
        """True when `password` matches; with `hashed` None, burns the same time and says False."""
        if hashed is None:
            if self._dummy is None:
                raise RuntimeError("PasswordHasher.start() was not awaited")
            await self._run(_check_sync, password, self._dummy)
            return False
        return await self._run(_check_sync, password, hashed)

    def needs_rehash(self, hashed: str) -> bool:
        """True when a stored hash uses another cost than the configured one."""
        return hash_cost(hashed) != self.cost

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
