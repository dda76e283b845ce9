"""Publishes the sessions revoked lately, read from the accounts database, to etcd for every verifier.

The database is the source of truth: every auth instance rebuilds the document from it every
`interval` seconds, and at once when this instance revokes a session (`poke`), and writes it
only when etcd holds something else. Instances on one database so write the same bytes and do
not fight; a write lost to a race or an etcd outage is put right on the next beat, and a crash
between the database update and the etcd write is healed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

import aetcd

from auth_svc.store import AuthStore, StoreUnavailable
from mesh import mesh_transport
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh.jwks_signature import JwksSignatureError, is_signed, sign_jwks, unverified_payload
from mesh.session_revocations import REVOKED_SESSIONS_KEY, encode_revocations
from mesh.tasks import cancel_and_wait
from mesh.workload_identity import WorkloadIdentity

log = logging.getLogger(__name__)

_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (*ETCD_ERRORS, StoreUnavailable)


class RevocationPublisher:
    """Keeps `key` equal to the sessions revoked within the last `keep_s` seconds.

    `keep_s` must cover an access token's lifetime plus the verifiers' leeway: after that, every
    access token of a session revoked then has expired anyway. `on_update(sessions)` also gets
    each new set (the auth instance's own verifier).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        store: AuthStore,
        *,
        keep_s: float,
        key: str = REVOKED_SESSIONS_KEY,
        interval: float = 1.0,
        call_timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_update: Callable[[dict[str, float]], object] = lambda sessions: None,
        signer: WorkloadIdentity | Literal["process"] | None = "process",
    ) -> None:
        self.key = key
        # With a mesh identity the value is signed like the JWKS (mesh/jwks_signature.py), so a
        # stolen etcd credential cannot clear the revocations: verifiers take only an auth's.
        self.signer = mesh_transport.identity() if signer == "process" else signer
        self._signed_generation = 0
        self.keep_s = keep_s
        self.interval = interval
        self.call_timeout = call_timeout
        self._store = store
        self._clock = clock
        self._on_update = on_update
        self._factory = ClientFactory(endpoints, call_timeout)
        self._client: aetcd.Client | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        self.sessions = 0
        self.last_error = ""

    def poke(self) -> None:
        """A session was just revoked here: publish now, not at the next beat."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"revocation publisher {self.key}")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        client, self._client = self._client, None
        await close_quietly(client, self.call_timeout)

    async def publish_once(self) -> bool:
        """Read the database, write etcd if it differs; True when a write was made."""
        now = self._clock()
        revoked = await self._store.families_revoked_since(now - self.keep_s)
        sessions = {sid: at + self.keep_s for sid, at in revoked.items()}
        self.sessions = len(sessions)
        self._on_update(sessions)
        document = encode_revocations(sessions)
        client = self._client or self._factory.new()
        self._client = client
        held = await bounded(client.get(self.key.encode()), self.call_timeout)
        if held is not None and self._still_good(held.value, document):
            return False
        value = document
        if self.signer is not None:
            self._signed_generation = self.signer.generation
            value = sign_jwks(document, self.signer.current)
        await bounded(client.put(self.key.encode(), value), self.call_timeout)
        self.writes += 1
        return True

    def _still_good(self, held: bytes, document: bytes) -> bool:
        """Whether the value in etcd already says `document`, signed by our current certificate
        when we sign (ECDSA signatures differ each time, so the payloads are compared)."""
        if self.signer is None:
            return held == document
        if not is_signed(held) or self._signed_generation != self.signer.generation:
            return False
        try:
            return unverified_payload(held) == document
        except JwksSignatureError:
            return False

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.publish_once()
                if self.last_error:
                    log.info("revoked sessions published again", extra={"key": self.key})
                self.last_error = ""
            except _PUBLISH_ERRORS as exc:
                if not self.last_error:
                    log.warning(
                        "revoked sessions not published; retrying",
                        extra={"key": self.key, "error": repr(exc)},
                    )
                self.last_error = repr(exc)
                client, self._client = self._client, None
                await close_quietly(client, self.call_timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
