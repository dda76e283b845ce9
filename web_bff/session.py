"""Browser sessions: tokens in HttpOnly SameSite cookies, double-submit CSRF, coalesced refresh."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

ACCESS_COOKIE = "ocrmesh_access"
REFRESH_COOKIE = "ocrmesh_refresh"
CSRF_COOKIE = "ocrmesh_csrf"
CSRF_HEADER = "x-csrf-token"
API_PATH = "/api"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Refresh this long before the access token expires, so a call never leaves with a dying token.
REFRESH_EARLY_S = 30.0
# A refresh token is single use (reuse revokes the whole family), so concurrent requests carrying
# the same one share one Refresh call, and its answer is kept this long for stragglers.
REFRESH_REMEMBER_S = 30.0

SecureMode = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class Tokens:
    """An access/refresh pair with their expiry times (epoch seconds)."""

    access: str
    access_expires_at: float
    refresh: str
    refresh_expires_at: float


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (only to decide when to refresh: every
    service verifies the signature itself). None when it cannot be read."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        exp = json.loads(base64.urlsafe_b64decode(body)).get("exp")
    except (ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) else None


def needs_refresh(access: str | None, now: float, early_s: float = REFRESH_EARLY_S) -> bool:
    """True when there is no usable access token: absent, unreadable or about to expire."""
    if not access:
        return True
    exp = token_expiry(access)
    return exp is None or exp - now < early_s


def _secure(request: Request, mode: SecureMode) -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    return request.url.scheme == "https"


def set_tokens(response: Response, request: Request, tokens: Tokens, mode: SecureMode, now: float) -> None:
    """Both tokens as HttpOnly SameSite=Strict cookies scoped to the API, expiring with the tokens."""
    secure = _secure(request, mode)
    for name, value, expires in (
        (ACCESS_COOKIE, tokens.access, tokens.access_expires_at),
        (REFRESH_COOKIE, tokens.refresh, tokens.refresh_expires_at),
    ):
        response.set_cookie(
            name,
            value,
            max_age=max(1, int(expires - now)),
            path=API_PATH,
            httponly=True,
            samesite="strict",
            secure=secure,
        )


def clear_tokens(response: Response) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(name, path=API_PATH, httponly=True, samesite="strict")


def csrf_token(request: Request) -> str:
    """The request's CSRF cookie value, or a new random one (set it with `set_csrf`)."""
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)


def set_csrf(response: Response, request: Request, token: str, mode: SecureMode) -> None:
    """The double-submit cookie: readable by the page's script (not HttpOnly), sent back in a header."""
    if request.cookies.get(CSRF_COOKIE) == token:
        return
    response.set_cookie(
        CSRF_COOKIE, token, path="/", httponly=False, samesite="strict", secure=_secure(request, mode)
    )


def csrf_failure(request: Request) -> str | None:
    """Why a state-changing request fails the CSRF check, or None when it passes.

    Double submit: the X-CSRF-Token header must equal the CSRF cookie. A foreign page can make the
    browser send the cookie but cannot read it to put it in a header. When the browser names the
    page's origin, it must be ours as well.
    """
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != own:
            return f"request from another site ({origin})"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not header:
        return "missing CSRF token"
    if not hmac.compare_digest(cookie.encode(), header.encode()):
        return "CSRF token does not match"
    return None


class RefreshCoalescer:
    """Runs at most one Refresh per refresh token and hands its result to every concurrent caller."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, remember_s: float = REFRESH_REMEMBER_S):
        self._clock = clock
        self._remember_s = remember_s
        self._results: dict[str, tuple[float, asyncio.Future[Tokens]]] = {}

    async def refresh(self, token: str, call: Callable[[str], Awaitable[Tokens]]) -> Tokens:
        now = self._clock()
        stale = [k for k, (at, f) in self._results.items() if f.done() and now - at > self._remember_s]
        for key in stale:
            del self._results[key]
        key = hashlib.sha256(token.encode()).hexdigest()
        found = self._results.get(key)
        if found is not None:
            return await asyncio.shield(found[1])
        future: asyncio.Future[Tokens] = asyncio.get_running_loop().create_future()
        self._results[key] = (now, future)
        try:
            tokens = await call(token)
        except asyncio.CancelledError:
            del self._results[key]
            future.cancel()
            raise
        except Exception as exc:
            del self._results[key]  # a failure is not remembered: the next request may try again
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        self._results[key] = (self._clock(), future)
        future.set_result(tokens)
        return tokens
