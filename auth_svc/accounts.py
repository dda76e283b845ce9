"""The auth use cases (register, login, refresh, logout, who-am-i), answered as rich gRPC errors."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc

from auth_svc.metrics import AuthMetrics
from auth_svc.passwords import HasherBusy, PasswordHasher, PasswordRejected, password_bytes
from auth_svc.store import AuthStore, StoreError, StoreUnavailable, UsernameTaken, UserRecord
from auth_svc.throttle import BUSY, LoginThrottle, Throttled
from auth_svc.tokens import RefreshRejected, Sessions, TokenPair
from auth_svc.usernames import UsernameRejected, normalise_username
from mesh import errors
from mesh.token_verify import Claims

log = logging.getLogger(__name__)

# One answer for an unknown user and a wrong password, so neither can be told apart.
BAD_CREDENTIALS = "wrong user name or password"
_MAX_RAW_KEY = 64


def _busy(exc: HasherBusy) -> errors.RichError:
    return errors.retry_later(
        "too many logins at once; retry shortly", exc.retry_after_s, reason="PASSWORD_HASHING_BUSY"
    )


@asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    try:
        yield
    except StoreUnavailable as exc:
        log.error("account database unavailable", extra={"why": str(exc)})
        raise errors.unavailable(
            "the account database is unavailable; retry shortly",
            reason="STORE_UNAVAILABLE",
            retry_after_s=1.0,
        ) from None
    except StoreError as exc:
        log.exception("account database error", extra={"why": str(exc)})
        raise errors.simple(
            grpc.StatusCode.INTERNAL, "account database error", reason="STORE_ERROR"
        ) from None


class Accounts:
    """Registration, login and sessions; raises `errors.RichError` for every refusal."""

    def __init__(
        self,
        store: AuthStore,
        hasher: PasswordHasher,
        throttle: LoginThrottle,
        sessions: Sessions,
        metrics: AuthMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._throttle = throttle
        self._sessions = sessions
        self._metrics = metrics
        self._clock = clock

    async def register(self, username: str, password: str, address: str = "") -> UserRecord:
        """A new account; INVALID_ARGUMENT (BadRequest), ALREADY_EXISTS, or RESOURCE_EXHAUSTED
        (REGISTER_THROTTLED) when `address` has registered too often.

        A taken name costs a bcrypt hash like a free one: the answer's timing does not tell
        which names exist, and the per-address throttle bounds how many can be probed."""
        violations: list[errors.FieldViolation] = []
        name = ""
        secret = b""
        try:
            name = normalise_username(username)
        except UsernameRejected as exc:
            violations.append(errors.FieldViolation("username", f"user name {exc.description}", exc.reason))
        try:
            secret = password_bytes(password)
        except PasswordRejected as exc:
            violations.append(errors.FieldViolation("password", f"password {exc.description}", exc.reason))
        if violations:
            self._metrics.outcome("register", "invalid")
            summary = "; ".join(v.description for v in violations)
            raise errors.bad_request(f"cannot register: {summary}", violations)
        async with _store_errors():
            try:
                await self._throttle.register_attempt(address)
            except Throttled as exc:
                self._metrics.outcome("register", "throttled")
                raise errors.retry_later(str(exc), exc.retry_after_s, reason="REGISTER_THROTTLED") from None
            try:
                hashed = await self._timed_hash(secret)
            except HasherBusy as exc:
                self._metrics.outcome("register", "busy")
                raise _busy(exc) from None
            user = UserRecord(uuid.uuid4().hex, name, hashed, self._clock())
            try:
                await self._store.add_user(user)
            except UsernameTaken:
                raise self._taken(name) from None
        self._metrics.outcome("register", "ok")
        log.info("account registered", extra={"user_id": user.user_id})
        return user

    def _taken(self, name: str) -> errors.RichError:
        self._metrics.outcome("register", "taken")
        return errors.simple(
            grpc.StatusCode.ALREADY_EXISTS, f"user name {name!r} is taken", reason="USERNAME_TAKEN"
        )

    async def login(self, username: str, password: str, address: str) -> tuple[UserRecord, TokenPair]:
        """Check credentials (throttled per name and address) and start a session."""
        try:
            secret = password_bytes(password, for_login=True)
        except PasswordRejected as exc:
            self._metrics.outcome("login", "invalid")
            raise errors.bad_request(
                f"password {exc.description}",
                [errors.FieldViolation("password", f"password {exc.description}", exc.reason)],
            ) from None
        try:
            name: str | None = normalise_username(username)
            key = name or ""
        except UsernameRejected:
            # No account can have this name: answer exactly as for an unknown user.
            name, key = None, "?" + username.strip().casefold()[:_MAX_RAW_KEY]
        try:
            async with _store_errors():
                ticket = await self._throttle.begin(key, address)
        except Throttled as exc:
            self._metrics.outcome("login", "throttled")
            raise errors.retry_later(
                str(exc),
                exc.retry_after_s,
                reason="LOGIN_BUSY" if exc.why == BUSY else "LOGIN_THROTTLED",
            ) from None
        succeeded: bool | None = None
        try:
            async with _store_errors():
                user = await self._store.user_by_name(name) if name else None
                try:
                    matched = await self._timed_check(secret, user.password_hash if user else None)
                except HasherBusy as exc:
                    self._metrics.outcome("login", "busy")
                    raise _busy(exc) from None
                succeeded = matched and user is not None
                if not succeeded or user is None:
                    self._metrics.outcome("login", "bad_credentials")
                    raise errors.simple(
                        grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS, reason="BAD_CREDENTIALS"
                    )
                await self._upgrade_hash(user, secret)
                pair = await self._sessions.start(user)
        finally:
            async with _store_errors():
                await self._throttle.finish(ticket, succeeded)
        self._metrics.outcome("login", "ok")
        return user, pair

    async def _upgrade_hash(self, user: UserRecord, secret: bytes) -> None:
        """Re-hash at the configured cost after the cost setting changed (best effort)."""
        if not self._hasher.needs_rehash(user.password_hash):
            return
        try:
            hashed = await self._hasher.hash(secret)
        except HasherBusy:
            return
        await self._store.set_password_hash(user.user_id, hashed)

    async def refresh(self, token: str) -> TokenPair:
        async with _store_errors():
            try:
                _user, pair = await self._sessions.refresh(token)
            except RefreshRejected as exc:
                self._metrics.outcome("refresh", exc.reason.lower())
                raise errors.simple(grpc.StatusCode.UNAUTHENTICATED, str(exc), reason=exc.reason) from None
        self._metrics.outcome("refresh", "ok")
        return pair

    async def logout(self, token: str, all_sessions: bool) -> int:
        async with _store_errors():
            try:
                revoked = await self._sessions.logout(token, all_sessions)
            except RefreshRejected as exc:
                raise errors.simple(grpc.StatusCode.UNAUTHENTICATED, str(exc), reason=exc.reason) from None
        self._metrics.outcome("logout", "ok")
        return revoked

    async def whoami(self, claims: Claims | None) -> UserRecord:
        """The account behind verified access-token claims."""
        if claims is None:
            raise errors.simple(
                grpc.StatusCode.UNAUTHENTICATED, "missing access token", reason="TOKEN_MISSING"
            )
        async with _store_errors():
            user = await self._store.user_by_id(str(claims["sub"]))
        if user is None:
            raise errors.simple(
                grpc.StatusCode.UNAUTHENTICATED,
                "the account of this token no longer exists",
                reason="ACCOUNT_GONE",
            )
        return user

    async def _timed_hash(self, secret: bytes) -> str:
        started = time.perf_counter()
        try:
            return await self._hasher.hash(secret)
        finally:
            self._metrics.password_seconds.observe(time.perf_counter() - started)

    async def _timed_check(self, secret: bytes, hashed: str | None) -> bool:
        started = time.perf_counter()
        try:
            return await self._hasher.check(secret, hashed)
        finally:
            self._metrics.password_seconds.observe(time.perf_counter() - started)
