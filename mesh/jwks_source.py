"""Keeps a TokenVerifier fed with the JWKS and the revoked sessions that auth instances publish in etcd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal

import grpc

from mesh import errors, mesh_transport
from mesh.etcd_client import ClientFactory
from mesh.jwks_signature import JwksSignatureError, is_signed, unverified_payload, verify_jwks
from mesh.key_poller import poll_key
from mesh.session_revocations import REVOKED_SESSIONS_KEY, parse_revocations
from mesh.tasks import cancel_and_wait
from mesh.token_verify import PUBLIC_METHODS, AuthInterceptor, TokenVerifier, guard_handler, parse_jwks
from mesh.workload_identity import WorkloadIdentity

log = logging.getLogger(__name__)

JWKS_KEY = "/ocrmesh/v1/jwks"
"""The etcd key holding the JWKS ({"keys": [...]}) that verifies access tokens."""
DEFAULT_ISSUER = "ocrmesh-auth"
"""`iss` of access tokens: the auth service's default, and what verifiers expect by default."""
DEFAULT_AUDIENCE = "ocrmesh"
"""`aud` of access tokens: the auth service's default, and what verifiers expect by default."""


class JwksSource:
    """Polls the JWKS key with a bounded get and hands every new valid document to `verifier`.

    Polling (every `interval` seconds, 0.5 by default) rather than watching: one small key needs
    no watch, and a poll needs no re-establishment after etcd is killed, frozen or compacted. A
    rotation reaches the verifier within `interval` plus one call. While etcd is unreachable, or
    when the key is deleted or holds something that is not a JWKS, the last good keys stay.
    The revoked sessions (`revoked_key`) are polled beside it: a logout reaches the verifier within
    `interval` plus one call.

    With a mesh identity (`trust`; by default this process's, see mesh/mesh_transport.py) only a
    JWKS signed by an auth identity of the same mesh CA is taken (mesh/jwks_signature.py): one
    written by anyone else holding an etcd credential is refused like garbage. Without one, the
    plain JSON JWKS is taken as it is (and a signed one for its content, unchecked).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        verifier: TokenVerifier,
        *,
        key: str = JWKS_KEY,
        revoked_key: str = REVOKED_SESSIONS_KEY,
        interval: float = 0.5,
        call_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        trust: WorkloadIdentity | Literal["process"] | None = "process",
    ) -> None:
        if interval <= 0 or call_timeout <= 0:
            raise ValueError("interval and call_timeout must be positive")
        self.key = key
        self.revoked_key = revoked_key
        self.verifier = verifier
        self.interval = interval
        self.call_timeout = call_timeout
        self._factory = ClientFactory(endpoints, call_timeout)
        self._clock = clock
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._revocations: asyncio.Task[None] | None = None
        self._outage = False
        self._applied: bytes | None = None
        self.trust = mesh_transport.identity() if trust == "process" else trust
        self.document = b""
        """The JWKS JSON in force (the signed value's content)."""
        self.signer = ""
        """The SPIFFE ID of the auth instance that signed it (empty without a mesh identity)."""
        # Public state for status pages and tests.
        self.kids: frozenset[str] = frozenset()
        self.connected = False
        self.updates = 0
        self.rejected = 0
        self.updated_at: float | None = None
        self.last_error = ""

    @property
    def ready(self) -> bool:
        """True once a valid JWKS has been loaded (it stays true while etcd is away)."""
        return self._ready.is_set()

    async def start(self) -> None:
        """Begin polling in the background (does not wait for etcd)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"jwks source {self.key}")
        if self._revocations is None and self.verifier.check_sessions:
            self._revocations = asyncio.create_task(
                poll_key(
                    self._factory,
                    self.revoked_key,
                    interval=self.interval,
                    call_timeout=self.call_timeout,
                    on_change=self.consider_revocations,
                ),
                name=f"revocations {self.revoked_key}",
            )

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first JWKS; returns `ready`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    async def close(self) -> None:
        for task in (self._task, self._revocations):
            if task is not None:
                await cancel_and_wait(task)
        self._task = self._revocations = None

    async def __aenter__(self) -> JwksSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def status(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "ready": self.ready,
            "connected": self.connected,
            "kids": sorted(self.kids),
            "updates": self.updates,
            "rejected": self.rejected,
            "signer": self.signer,
            "revoked_sessions": self.verifier.revoked_sessions,
            "last_error": self.last_error,
        }

    def consider(self, raw: bytes | None) -> bool:
        """Load one value of the key (None: absent); True when the verifier got new keys."""
        if raw is None:
            if self.ready:
                log.warning("JWKS key is gone from etcd; keeping the last keys", extra={"key": self.key})
            self.last_error = f"no JWKS at {self.key}"
            return False
        if raw == self._applied:
            # Re-published with the same content (another auth instance on the same database).
            self.last_error = ""
            return False
        try:
            document, signer = self._unwrap(raw)
        except JwksSignatureError as exc:
            self.rejected += 1
            self.last_error = f"JWKS not signed by an auth identity: {exc}"
            log.warning(
                "JWKS in etcd not signed by an auth identity; ignored, keeping the last keys",
                extra={"key": self.key, "why": str(exc)},
            )
            return False
        try:
            if not parse_jwks(document):
                raise ValueError("it has no usable ES256 key")
            self.verifier.update_jwks(document)
        except ValueError as exc:  # also JSON errors: json.JSONDecodeError is a ValueError
            self.rejected += 1
            self.last_error = f"not a usable JWKS: {exc}"
            log.error(
                "JWKS in etcd rejected; keeping the last keys", extra={"key": self.key, "why": str(exc)}
            )
            return False
        self._applied = raw
        self.document, self.signer = document, signer
        kids = self.verifier.kids
        changed = kids != self.kids
        self.kids = kids
        self.updates += 1
        self.updated_at = self._clock()
        self.last_error = ""
        if changed or not self.ready:
            log.info("JWKS loaded", extra={"key": self.key, "kids": sorted(kids)})
        self._ready.set()
        return True

    def _unwrap(self, raw: bytes) -> tuple[bytes, str]:
        """(the JWKS document, who signed it) of one value of the key, or JwksSignatureError."""
        if self.trust is None:
            return (unverified_payload(raw) if is_signed(raw) else raw), ""
        if not is_signed(raw):
            raise JwksSignatureError("it is plain JSON, without a signature")
        identity = self.trust.current
        document, signer = verify_jwks(raw, identity.ca_pem, identity.spiffe_id.trust_domain)
        return document, signer.uri

    def consider_revocations(self, raw: bytes | None) -> None:
        """Load one value of the revoked-sessions key (None: absent, nothing revoked lately).

        With a mesh identity the value must be signed by an auth identity, like the JWKS; anything
        else, and the key's absence, keeps the last set (whoever could write etcd could otherwise
        un-revoke every session)."""
        try:
            if raw is None:
                if self.trust is not None:
                    return
                sessions: dict[str, float] = {}
            else:
                sessions = parse_revocations(self._unwrap(raw)[0])
        except JwksSignatureError as exc:
            log.warning(
                "revoked sessions in etcd not signed by an auth identity; keeping the last set",
                extra={"key": self.revoked_key, "why": str(exc)},
            )
            return
        except ValueError as exc:  # keep the last good set: dropping it would un-revoke sessions
            log.error(
                "revoked sessions in etcd unreadable; keeping the last set",
                extra={"key": self.revoked_key, "why": str(exc)},
            )
            return
        self.verifier.update_revoked(sessions)

    async def _run(self) -> None:
        await poll_key(
            self._factory,
            self.key,
            interval=self.interval,
            call_timeout=self.call_timeout,
            on_change=self.consider,
            on_read=self._reachable,
            on_error=self._unreachable,
        )

    def _reachable(self) -> None:
        if self._outage:
            log.info("etcd reachable again", extra={"key": self.key})
            self._outage = False
        self.connected = True

    def _unreachable(self, exc: BaseException) -> None:
        # etcd away: keep the keys in force (poll_key tries again on a fresh client).
        if not self._outage:
            log.warning("JWKS unreadable; keeping the last keys", extra={"key": self.key, "error": repr(exc)})
        self._outage = True
        self.connected = False
        self.last_error = repr(exc)


class JwksAuthInterceptor(AuthInterceptor):
    """AuthInterceptor whose keys come from a JwksSource; UNAVAILABLE until the first JWKS.

    Before any JWKS has arrived no token can be checked, valid or not, so protected calls get a
    retryable UNAVAILABLE (reason JWKS_NOT_LOADED) saying what is missing, not UNAUTHENTICATED.
    """

    def __init__(
        self, source: JwksSource, public_methods: Iterable[str] = PUBLIC_METHODS, retry_after_s: float = 1.0
    ) -> None:
        super().__init__(source.verifier, public_methods)
        self.source = source
        self.retry_after_s = retry_after_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self.source.ready or handler_call_details.method in self.public_methods:
            return await super().intercept_service(continuation, handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        refusal = errors.unavailable(
            f"cannot verify access tokens yet: no JWKS at etcd key {self.source.key} "
            f"(is an auth service running and publishing to this etcd?)",
            reason="JWKS_NOT_LOADED",
            retry_after_s=self.retry_after_s,
        )
        return refusing(handler, refusal)


def refusing(handler: grpc.RpcMethodHandler, refusal: errors.RichError) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serialisers as `handler` that only aborts with `refusal`."""
    return guard_handler(handler, None, refusal)
