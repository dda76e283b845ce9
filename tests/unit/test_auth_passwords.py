"""Password rules, bcrypt off the event loop, the dummy hash, and the bounded waiting line."""

from __future__ import annotations

import asyncio
import threading

import pytest

from auth_svc import passwords
from auth_svc.config import AuthConfig
from auth_svc.passwords import (
    HasherBusy,
    PasswordHasher,
    PasswordRejected,
    hash_cost,
    password_bytes,
)


def test_length_limits_in_utf8_bytes() -> None:
    assert password_bytes("a" * 8) == b"a" * 8
    assert password_bytes("a" * 72) == b"a" * 72
    with pytest.raises(PasswordRejected, match="at most 72 bytes") as too_long:
        password_bytes("a" * 73)
    assert too_long.value.reason == "PASSWORD_TOO_LONG"
    with pytest.raises(PasswordRejected, match="at least 8"):
        password_bytes("short")
    # 24 three-byte characters are 72 bytes; one more is 75.
    assert len(password_bytes("密" * 24)) == 72
    with pytest.raises(PasswordRejected, match="got 75"):
        password_bytes("密" * 25)


def test_login_checks_only_the_maximum_and_empty() -> None:
    assert password_bytes("short", for_login=True) == b"short"
    with pytest.raises(PasswordRejected):
        password_bytes("", for_login=True)
    with pytest.raises(PasswordRejected):
        password_bytes("a" * 73, for_login=True)


def test_nfkc_and_nul() -> None:
    assert password_bytes("ｐａｓｓｗｏｒｄ１") == b"password1"
    with pytest.raises(PasswordRejected, match="NUL"):
        password_bytes("abc\x00defgh")


async def test_hash_check_and_dummy() -> None:
    hasher = PasswordHasher(cost=4, concurrency=2)
    try:
        await hasher.start()
        hashed = await hasher.hash(b"correct horse")
        assert hash_cost(hashed) == 4 and not hasher.needs_rehash(hashed)
        assert await hasher.check(b"correct horse", hashed)
        assert not await hasher.check(b"wrong horse!", hashed)
        assert not await hasher.check(b"correct horse", None)  # unknown user: dummy hash
        assert not await hasher.check(b"correct horse", "not-a-bcrypt-hash")
    finally:
        hasher.close()


async def test_default_cost_is_12() -> None:
    assert AuthConfig().bcrypt_cost == 12
    hasher = PasswordHasher(cost=AuthConfig().bcrypt_cost, concurrency=1)
    try:
        hashed = await hasher.hash(b"password123")
        assert hashed.startswith("$2b$12$")
        assert hasher.needs_rehash(hashed.replace("$12$", "$10$", 1))
    finally:
        hasher.close()


async def test_bcrypt_runs_off_the_event_loop_during_a_login_storm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check runs on a worker thread, never on the loop's: a login storm cannot stall the
    loop. (Asserted on threads, not on a measured stall, which a busy machine would break.)"""
    threads: list[int] = []
    real_check = passwords._check_sync

    def recording_check(password: bytes, hashed: str) -> bool:
        threads.append(threading.get_ident())
        return real_check(password, hashed)

    monkeypatch.setattr(passwords, "_check_sync", recording_check)
    hasher = PasswordHasher(cost=8, concurrency=1, max_waiting=64)
    try:
        hashed = await hasher.hash(b"password123")
        storm = [asyncio.create_task(hasher.check(b"password123", hashed)) for _ in range(16)]
        ticks = 0
        while not all(t.done() for t in storm):
            await asyncio.sleep(0)
            ticks += 1
        assert all(t.result() for t in storm)
        assert len(threads) == 16 and threading.get_ident() not in threads
        assert ticks > 16  # the loop went round while the checks ran
    finally:
        hasher.close()


async def test_full_waiting_line_is_refused() -> None:
    hasher = PasswordHasher(cost=8, concurrency=1, max_waiting=2)
    try:
        hashed = await hasher.hash(b"password123")
        tasks = [asyncio.create_task(hasher.check(b"password123", hashed)) for _ in range(6)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        busy = [r for r in results if isinstance(r, HasherBusy)]
        assert len(busy) == 3 and all(b.retry_after_s > 0 for b in busy)
        assert results.count(True) == 3
        assert hasher.pending == 0
    finally:
        hasher.close()
