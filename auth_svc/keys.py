"""ES256 signing keys: generation, storage form, rotation schedule and the JWKS they publish.

A key is published (in the JWKS) from its creation, signs from `activates_at`, and stays
published after its successor activates for as long as its last tokens can live. The schedule
is pure (`signer`, `published`, `rotation_due`); `KeyRing` keeps it in sync with the store so
every instance on one database signs with the same key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth_svc.store import AuthStore, KeyRecord
from mesh.jwks_source import JWKS_KEY

log = logging.getLogger(__name__)

JWKS_ETCD_KEY = JWKS_KEY

Jwks = dict[str, list[dict[str, str]]]
KeysChanged = Callable[[Jwks], Awaitable[None]]
Put = Callable[[str, str], Awaitable[object]]


class KeyLoadError(Exception):
    """A stored private key cannot be read (wrong or missing passphrase, corrupt PEM)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    jwk: dict[str, str]
    created_at: float
    activates_at: float


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key, with its RFC 7638 thumbprint as `kid`."""
    numbers = public_key.public_numbers()
    x = _b64url(numbers.x.to_bytes(32, "big"))
    y = _b64url(numbers.y.to_bytes(32, "big"))
    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(canonical.encode()).digest())
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256", "use": "sig", "kid": kid}


def generate(now: float, activates_at: float) -> SigningKey:
    """A fresh P-256 key."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(private.public_key())
    return SigningKey(jwk["kid"], private, jwk, now, activates_at)


def to_record(key: SigningKey, passphrase: bytes | None) -> KeyRecord:
    """The stored form: PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return KeyRecord(
        key.kid,
        pem.decode("ascii"),
        json.dumps(key.jwk, sort_keys=True),
        bool(passphrase),
        key.created_at,
        key.activates_at,
    )


def from_record(record: KeyRecord, passphrase: bytes | None) -> SigningKey:
    """Read a stored key back; KeyLoadError when it cannot be decrypted or is not P-256."""
    if record.encrypted and not passphrase:
        raise KeyLoadError(f"signing key {record.kid} is encrypted: give --key-passphrase-file")
    try:
        private = serialization.load_pem_private_key(
            record.private_pem.encode("ascii"), passphrase if record.encrypted else None
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyLoadError(f"signing key {record.kid} cannot be read: {exc}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise KeyLoadError(f"signing key {record.kid} is not a P-256 key")
    jwk = public_jwk(private.public_key())
    if jwk["kid"] != record.kid:
        raise KeyLoadError(f"signing key {record.kid} does not match its kid")
    return SigningKey(record.kid, private, jwk, record.created_at, record.activates_at)


def _ordered(keys: Sequence[SigningKey]) -> list[SigningKey]:
    return sorted(keys, key=lambda k: (k.activates_at, k.kid))


def signer(keys: Sequence[SigningKey], now: float) -> SigningKey | None:
    """The key that signs at `now`: the latest activated one (the earliest if none is yet)."""
    ordered = _ordered(keys)
    active = [k for k in ordered if k.activates_at <= now]
    if active:
        return active[-1]
    return ordered[0] if ordered else None


def published(keys: Sequence[SigningKey], now: float, keep_after_retire_s: float) -> list[SigningKey]:
    """Keys that belong in the JWKS: pending, signing, or retired less than `keep_after_retire_s`
    ago (a retired key's tokens live at most one access TTL)."""
    ordered = _ordered(keys)
    current = signer(ordered, now)
    kept = []
    for index, key in enumerate(ordered):
        later = [k.activates_at for k in ordered[index + 1 :] if k.activates_at <= now]
        retired_at = later[0] if later else None
        if key is current or retired_at is None or now < retired_at + keep_after_retire_s:
            kept.append(key)
    return kept


def rotation_due(keys: Sequence[SigningKey], now: float, rotate_after_s: float) -> bool:
    """True when there is no key, or the newest is older than `rotate_after_s` (0: never)."""
    if not keys:
        return True
    if rotate_after_s <= 0:
        return False
    return now - max(k.created_at for k in keys) >= rotate_after_s


def jwks_document(keys: Sequence[SigningKey]) -> Jwks:
    """{"keys": [public JWK, ...]} in activation order."""
    return {"keys": [dict(k.jwk) for k in _ordered(keys)]}


async def publish_jwks(jwks: Jwks, put: Put, key: str = JWKS_ETCD_KEY) -> None:
    """Write the JWKS as JSON with `put(key, value)` (e.g. an etcd client's put)."""
    await put(key, json.dumps(jwks, sort_keys=True, separators=(",", ":")))


class KeyRing:
    """The signing keys of one instance, kept in step with the store.

    `sync()` reloads the keys from the store, makes a new one when rotation is due, prunes keys
    no longer published, and calls every `on_keys_changed` listener when the JWKS changed (the
    hook for publishing the JWKS to etcd, and for the instance's own token verifier).
    """

    def __init__(
        self,
        store: AuthStore,
        *,
        clock: Callable[[], float],
        rotate_after_s: float,
        publish_ahead_s: float,
        keep_after_retire_s: float,
        passphrase: bytes | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.rotate_after_s = rotate_after_s
        self.publish_ahead_s = publish_ahead_s
        self.keep_after_retire_s = keep_after_retire_s
        self._passphrase = passphrase
        self._keys: dict[str, SigningKey] = {}
        self._jwks: Jwks = {"keys": []}
        self._listeners: list[KeysChanged] = []
        self._lock = asyncio.Lock()

    def add_listener(self, listener: KeysChanged) -> None:
        self._listeners.append(listener)

    @property
    def keys(self) -> list[SigningKey]:
        return _ordered(list(self._keys.values()))

    def signer(self) -> SigningKey:
        key = signer(list(self._keys.values()), self._clock())
        if key is None:
            raise RuntimeError("KeyRing.sync() has not loaded any key yet")
        return key

    def jwks(self) -> Jwks:
        return self._jwks

    async def sync(self) -> None:
        """Reload from the store, rotate when due, prune, and notify on a JWKS change."""
        async with self._lock:
            await self._load()
            now = self._clock()
            if rotation_due(list(self._keys.values()), now, self.rotate_after_s):
                ahead = self.publish_ahead_s if self._keys else 0.0
                await self._add(generate(now, now + ahead))
            await self._prune(now)
            await self._publish_if_changed(now)

    async def rotate(self, publish_ahead_s: float | None = None) -> SigningKey:
        """Make a new key now; it signs after `publish_ahead_s` (default: the configured one)."""
        async with self._lock:
            now = self._clock()
            ahead = self.publish_ahead_s if publish_ahead_s is None else publish_ahead_s
            key = generate(now, now + ahead)
            await self._add(key)
            await self._publish_if_changed(now)
            log.info("signing key rotated", extra={"kid": key.kid, "activates_at": now + ahead})
            return key

    async def _load(self) -> None:
        records = await self._store.signing_keys()
        fresh = [r for r in records if r.kid not in self._keys]
        if fresh:
            # Decrypting PEMs runs a KDF: keep it off the event loop.
            loaded = await asyncio.to_thread(lambda: [from_record(r, self._passphrase) for r in fresh])
            for key in loaded:
                self._keys[key.kid] = key
        stored = {r.kid for r in records}
        for kid in [k for k in self._keys if k not in stored]:
            del self._keys[kid]

    async def _add(self, key: SigningKey) -> None:
        record = await asyncio.to_thread(to_record, key, self._passphrase)
        await self._store.add_signing_key(record)
        self._keys[key.kid] = key

    async def _prune(self, now: float) -> None:
        keep = {k.kid for k in published(list(self._keys.values()), now, self.keep_after_retire_s)}
        gone = [kid for kid in self._keys if kid not in keep]
        if gone:
            await self._store.delete_signing_keys(gone)
            for kid in gone:
                del self._keys[kid]
            log.info("retired signing keys removed", extra={"kids": gone})

    async def _publish_if_changed(self, now: float) -> None:
        keys = published(list(self._keys.values()), now, self.keep_after_retire_s)
        jwks = jwks_document(keys)
        if jwks == self._jwks:
            return
        self._jwks = jwks
        for listener in self._listeners:
            try:
                await listener(jwks)
            except Exception:  # a listener (etcd put, ...) must not stop key rotation
                log.exception("a keys-changed listener failed")
