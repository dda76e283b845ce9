"""Local verification of ES256 access tokens against a JWKS, and the server interceptor using it."""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mesh import errors
from mesh.handler_wrapping import refusing_unread, wrap_handler

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "jti")
PUBLIC_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
_MAX_TOKEN_BYTES = 8192
_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_ACCEPTED_TYP = frozenset({"JWT", "AT+JWT", "APPLICATION/AT+JWT"})

Claims = dict[str, Any]

current_claims: contextvars.ContextVar[Claims | None] = contextvars.ContextVar("current_claims", default=None)


class TokenError(Exception):
    """An access token that cannot be accepted; `reason` is a stable machine-readable code."""

    reason = "TOKEN_INVALID"


class TokenMissing(TokenError):
    reason = "TOKEN_MISSING"


class TokenExpired(TokenError):
    reason = "TOKEN_EXPIRED"


class TokenInvalid(TokenError):
    reason = "TOKEN_INVALID"


class TokenRevoked(TokenError):
    reason = "TOKEN_REVOKED"


def _b64decode(segment: str) -> bytes:
    """Unpadded base64url, strictly: other characters or a bad length make the token invalid."""
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise TokenInvalid("malformed token")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_object(raw: bytes, part: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise TokenInvalid(f"malformed token {part}") from None
    if not isinstance(value, dict):
        raise TokenInvalid(f"malformed token {part}")
    return value


def _b64url_int(value: object, what: str) -> int:
    if not isinstance(value, str):
        raise ValueError(f"{what} is missing")
    try:
        raw = _b64decode(value)
    except TokenInvalid:
        raise ValueError(f"{what} is not base64url") from None
    if len(raw) != 32:
        raise ValueError(f"{what} is not a 32-byte P-256 coordinate")
    return int.from_bytes(raw, "big")


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from an EC JWK (private parts are ignored); ValueError otherwise."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("not an EC P-256 key")
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        raise ValueError("not an ES256 signing key")
    x = _b64url_int(jwk.get("x"), "x")
    y = _b64url_int(jwk.get("y"), "y")
    # Raises ValueError when the point is not on the curve.
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def parse_jwks(jwks: Mapping[str, Any] | str | bytes) -> dict[str, ec.EllipticCurvePublicKey]:
    """kid -> public key for every usable ES256 key; ValueError when the document is not a JWKS.

    Keys this verifier cannot use (RSA, other curves, no kid) are skipped with a warning.
    """
    doc: Any = json.loads(jwks) if isinstance(jwks, str | bytes) else jwks
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError('a JWKS is a JSON object with a "keys" list')
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in doc["keys"]:
        kid = entry.get("kid") if isinstance(entry, Mapping) else None
        if not isinstance(kid, str) or not kid:
            log.warning("JWKS entry without a kid skipped")
            continue
        try:
            keys[kid] = public_key_from_jwk(entry)
        except ValueError as exc:
            log.warning("JWKS key skipped", extra={"kid": kid, "why": str(exc)})
    return keys


class TokenVerifier:
    """Verifies ES256 access tokens locally: signature by `kid` from the JWKS, iss, aud, exp.

    Only ES256 is accepted (no `none`, no HS*, no RS*), whatever the token's header says. Public
    key objects are built once per JWKS update; recently verified tokens are cached (the
    signature check is the cost) and still re-checked for expiry on every use.
    """

    def __init__(
        self,
        jwks: Mapping[str, Any] | str | bytes | None = None,
        *,
        issuer: str,
        audience: str,
        leeway_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
        check_sessions: bool = True,
    ) -> None:
        self.issuer = issuer
        # False only for the hardening benchmark (`ocrmesh bench hardening`, via `ocrmesh serve ocr
        # --bench-unhardened`): revoked sessions are then neither followed nor checked.
        self.check_sessions = check_sessions
        self.audience = audience
        self.leeway_s = leeway_s
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._revoked: Mapping[str, float] = {}
        if jwks is not None:
            self.update_jwks(jwks)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def update_jwks(self, jwks: Mapping[str, Any] | str | bytes) -> None:
        """Replace the trusted keys (rotation); a bad document raises and keeps the old keys."""
        self._keys = parse_jwks(jwks)
        self._cache.clear()

    @property
    def revoked_sessions(self) -> int:
        """How many revoked sessions are known (their tokens are refused)."""
        return len(self._revoked)

    def update_revoked(self, sessions: Mapping[str, float]) -> None:
        """Replace the set of revoked sessions (sid -> until): their tokens are refused from now on."""
        self._revoked = dict(sessions)

    def verify(self, token: str) -> Claims:
        """The token's claims, or TokenExpired / TokenInvalid / TokenRevoked saying why not."""
        if len(token) > _MAX_TOKEN_BYTES:
            raise TokenInvalid("token too large")
        cached = self._cache.get(token)
        if cached is not None:
            self._check_times(cached)
            self._check_session(cached)
            return dict(cached)
        claims = self._verify_signature(token)
        self._check_times(claims)
        self._check_session(claims)
        self._cache[token] = claims
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return dict(claims)

    def _verify_signature(self, token: str) -> Claims:
        """JWS compact serialisation, ES256 only: header, then signature, then claims."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenInvalid("malformed token")
        header_b64, payload_b64, signature_b64 = parts
        header = _json_object(_b64decode(header_b64), "header")
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise TokenInvalid(f"algorithm {alg!r} is not accepted (only {ALGORITHM})")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() not in _ACCEPTED_TYP):
            raise TokenInvalid(f"token type {typ!r} is not an access token")
        if "crit" in header:
            raise TokenInvalid("critical header extensions are not supported")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenInvalid("unknown signing key (kid)")
        signature = _b64decode(signature_b64)
        if len(signature) != 64:  # ES256 signatures are r || s, 32 bytes each
            raise TokenInvalid("bad signature")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            key.verify(der, f"{header_b64}.{payload_b64}".encode("ascii"), _ECDSA_SHA256)
        except InvalidSignature:
            raise TokenInvalid("bad signature") from None
        claims = _json_object(_b64decode(payload_b64), "payload")
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise TokenInvalid(f"claim {name!r} is missing")
        if claims["iss"] != self.issuer:
            raise TokenInvalid("wrong issuer")
        aud = claims["aud"]
        if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            raise TokenInvalid("wrong audience")
        for name in ("exp", "iat"):
            if not isinstance(claims[name], int | float) or isinstance(claims[name], bool):
                raise TokenInvalid(f"claim {name!r} is not a number")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise TokenInvalid("claim 'sub' is not a user id")
        return claims

    def _check_session(self, claims: Claims) -> None:
        if not self.check_sessions:
            return
        sid = claims.get("sid")
        if isinstance(sid, str) and sid in self._revoked:
            raise TokenRevoked("this session has ended (logged out or revoked): log in again")

    def _check_times(self, claims: Claims) -> None:
        now = self._clock()
        if now > claims["exp"] + self.leeway_s:
            raise TokenExpired("access token expired")
        if claims["iat"] > now + self.leeway_s:
            raise TokenInvalid("token issued in the future")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + self.leeway_s:
            raise TokenInvalid("token not valid yet")


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The token in `authorization: Bearer <token>` metadata; TokenMissing when there is none."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise TokenMissing("authorization metadata is not 'Bearer <token>'")
    raise TokenMissing("missing access token: send metadata 'authorization: Bearer <token>'")


def unauthenticated(error: TokenError) -> errors.RichError:
    """UNAUTHENTICATED with ErrorInfo reason TOKEN_MISSING / TOKEN_EXPIRED / TOKEN_INVALID /
    TOKEN_REVOKED."""
    message = str(error)
    if isinstance(error, TokenInvalid):
        message = f"invalid access token: {error}"
    return errors.simple(grpc.StatusCode.UNAUTHENTICATED, message, reason=error.reason)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires a valid access token on every method outside `public_methods`.

    The verified claims are in `current_claims` while the handler runs; a missing, expired or
    forged token ends the call with UNAUTHENTICATED before the handler sees it.
    """

    def __init__(self, verifier: TokenVerifier, public_methods: Iterable[str] = PUBLIC_METHODS) -> None:
        self.verifier = verifier
        self.public_methods = frozenset(public_methods)

    def check(self, metadata: Iterable[tuple[str, Any]] | None) -> Claims:
        """The claims of the call's bearer token, or a TokenError."""
        return self.verifier.verify(bearer_token(metadata))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self.public_methods:
            return handler
        try:
            claims: Claims | None = self.check(handler_call_details.invocation_metadata)
            refusal: errors.RichError | None = None
        except TokenError as exc:
            claims, refusal = None, unauthenticated(exc)
        return guard_handler(handler, claims, refusal)


class _ClaimsScope:
    """Refuses the call with `refusal`, or runs it with `claims` in `current_claims`.

    A plain class, not `contextlib.asynccontextmanager`: this is on every protected call's path
    and the class costs about a third as much per call.
    """

    __slots__ = ("_claims", "_context", "_refusal", "_token")

    def __init__(self, claims: Claims | None, refusal: errors.RichError | None, context: Any) -> None:
        self._claims = claims
        self._refusal = refusal
        self._context = context

    async def __aenter__(self) -> None:
        if self._refusal is not None:
            await errors.abort(self._context, self._refusal)
        self._token = current_claims.set(self._claims)

    async def __aexit__(self, *exc_info: object) -> None:
        current_claims.reset(self._token)


def guard_handler(
    handler: grpc.RpcMethodHandler, claims: Claims | None, refusal: errors.RichError | None
) -> grpc.RpcMethodHandler:
    """The same handler, run with `claims` in the contextvar, or refused with `refusal` before
    the request is read (a caller without a valid token cannot make the server buffer a body)."""
    if refusal is not None:
        return refusing_unread(handler, refusal)
    return wrap_handler(handler, lambda context, unary: _ClaimsScope(claims, refusal, context))
