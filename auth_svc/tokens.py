"""Access tokens (ES256 JWTs) and rotating refresh tokens with family-wide reuse detection.

A refresh token is 32 random bytes, handed out once and stored only as its sha256. Each login
starts a family; each Refresh uses up the presented token and issues the next one in the same
family. Presenting a used token again means it was copied: the whole family is revoked, so the
thief and the victim both have to log in again.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from auth_svc.keys import KeyRing, SigningKey
from auth_svc.store import AuthStore, RefreshRecord, UserRecord

log = logging.getLogger(__name__)

REFRESH_PREFIX = "ocrr_"
_MAX_REFRESH_CHARS = 256


@dataclass(frozen=True)
class TokenSettings:
    issuer: str
    audience: str
    access_ttl_s: float
    refresh_ttl_s: float


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    access_expires_at: float
    refresh_token: str
    refresh_expires_at: float


class RefreshRejected(Exception):
    """A refresh token that cannot be used; `reason` is a stable code, the message is safe."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def issue_access_token(
    key: SigningKey, user: UserRecord, now: float, settings: TokenSettings, session_id: str
) -> tuple[str, float]:
    """A signed ES256 access token for `user` in session `session_id` (the refresh-token family,
    claim `sid`: revoking the family revokes its access tokens too), and its expiry time."""
    issued = int(now)
    expires = issued + int(settings.access_ttl_s)
    claims = {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": user.user_id,
        "name": user.username,
        "iat": issued,
        "exp": expires,
        "jti": uuid.uuid4().hex,
        "sid": session_id,
    }
    token = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid})
    return token, float(expires)


def new_refresh_token() -> str:
    """A fresh opaque refresh token (prefixed so secret scanners can spot leaked ones)."""
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """What the database keeps: sha256 hex of the token (tokens are random, so no salt needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Sessions:
    """Issues token pairs, rotates refresh tokens, detects reuse, revokes families."""

    def __init__(
        self,
        store: AuthStore,
        keyring: KeyRing,
        settings: TokenSettings,
        clock: Callable[[], float],
        on_revoke: Callable[[], object] = lambda: None,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self.settings = settings
        self._clock = clock
        self._on_revoke = on_revoke  # sessions ended: publish the revocation now

    def _pair(
        self, user: UserRecord, now: float, family_id: str | None = None
    ) -> tuple[TokenPair, RefreshRecord]:
        family_id = family_id or uuid.uuid4().hex
        access, access_exp = issue_access_token(self._keyring.signer(), user, now, self.settings, family_id)
        refresh = new_refresh_token()
        record = RefreshRecord(
            token_hash=hash_refresh_token(refresh),
            family_id=family_id,
            user_id=user.user_id,
            issued_at=now,
            expires_at=now + self.settings.refresh_ttl_s,
        )
        return TokenPair(access, access_exp, refresh, record.expires_at), record

    async def start(self, user: UserRecord) -> TokenPair:
        """A new session (refresh-token family) for a user who just logged in."""
        pair, record = self._pair(user, self._clock())
        await self._store.add_refresh_token(record)
        return pair

    async def refresh(self, token: str) -> tuple[UserRecord, TokenPair]:
        """Use up `token` and return the next pair; RefreshRejected when it cannot be used."""
        token_hash = self._hash_checked(token)
        now = self._clock()
        old = await self._store.refresh_token(token_hash)
        if old is None:
            raise RefreshRejected("invalid refresh token", "REFRESH_INVALID")
        user = await self._store.user_by_id(old.user_id)
        if user is None:
            raise RefreshRejected("the account no longer exists", "ACCOUNT_GONE")
        pair, replacement = self._pair(user, now, old.family_id)
        used = await self._store.exchange_refresh_token(token_hash, replacement, now)
        if used is not None:
            return user, pair
        # Not exchanged: read it again, as a racing call may have used it meanwhile.
        current = await self._store.refresh_token(token_hash) or old
        if current.revoked_at is not None:
            raise RefreshRejected("refresh token revoked; log in again", "REFRESH_REVOKED")
        if current.used_at is not None:
            await self._store.revoke_family(current.family_id, now)
            self._on_revoke()
            log.warning(
                "refresh token reuse: family revoked",
                extra={"user_id": current.user_id, "family_id": current.family_id},
            )
            raise RefreshRejected(
                "refresh token already used; every session of this login is revoked",
                "REFRESH_REUSED",
            )
        raise RefreshRejected("refresh token expired; log in again", "REFRESH_EXPIRED")

    async def logout(self, token: str, all_sessions: bool) -> int:
        """Revoke the token's family (or all the user's families); returns how many."""
        record = await self._store.refresh_token(self._hash_checked(token))
        if record is None:
            raise RefreshRejected("invalid refresh token", "REFRESH_INVALID")
        now = self._clock()
        if all_sessions:
            revoked = await self._store.revoke_user(record.user_id, now)
        else:
            revoked = await self._store.revoke_family(record.family_id, now)
        self._on_revoke()
        return revoked

    def _hash_checked(self, token: str) -> str:
        if not token or len(token) > _MAX_REFRESH_CHARS or not token.startswith(REFRESH_PREFIX):
            raise RefreshRejected("invalid refresh token", "REFRESH_INVALID")
        return hash_refresh_token(token)
