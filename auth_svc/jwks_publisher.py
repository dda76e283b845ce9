"""Publishes the instance's JWKS to etcd: on every change, retried while etcd is away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import aetcd

from auth_svc.keys import JWKS_ETCD_KEY, Jwks
from mesh import mesh_transport
from mesh.backoff import Backoff
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh.jwks_signature import sign_jwks
from mesh.tasks import cancel_and_wait
from mesh.workload_identity import WorkloadIdentity

log = logging.getLogger(__name__)


def _encoded(jwks: Jwks) -> bytes:
    """The JWKS as JSON (`keys.publish_jwks`'s bytes): what is written, or signed, to etcd."""
    return json.dumps(jwks, sort_keys=True, separators=(",", ":")).encode()


class JwksPublisher:
    """Writes the newest JWKS of this instance to `key`; `publish` is a KeyRing listener.

    `publish(jwks)` only records the wish and returns; a background task puts it, retrying with
    capped jittered backoff for ever while etcd is unreachable. Every `check_interval` seconds a
    bounded get checks the key still exists and puts it back if not (etcd lost its data). It does
    not overwrite a different JWKS it finds there: instances on one database publish the same key
    set, and one that is behind (it has not reloaded keys yet) catches up at its next key sync and
    publishes the same content, so the last writer wins without the instances fighting.

    With a mesh identity (`signer`; by default this process's) the value is a JWS of the JWKS
    signed with the instance's mesh key, its certificate in the header (mesh/jwks_signature.py),
    so verifiers take it only from an auth identity; it is signed again when the identity
    rotates, so the certificate in it stays in date. Without one it is the plain JSON.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        key: str = JWKS_ETCD_KEY,
        call_timeout: float = 1.0,
        check_interval: float = 10.0,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        signer: WorkloadIdentity | Literal["process"] | None = "process",
    ) -> None:
        self.key = key
        self.signer = mesh_transport.identity() if signer == "process" else signer
        self._signed_generation = 0
        self._value = b""  # what this instance last wrote
        self.call_timeout = call_timeout
        self.check_interval = check_interval
        self._factory = ClientFactory(endpoints, call_timeout)
        self._backoff = backoff or Backoff()
        self._rand = rand
        self._jwks: Jwks | None = None
        self._wanted = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._client: aetcd.Client | None = None
        # Public state for status pages and tests.
        self.puts = 0
        self.failures = 0
        self.last_error = ""

    @property
    def published(self) -> bool:
        """True when etcd holds this instance's newest JWKS (as far as it knows)."""
        return self._wanted > 0 and self._written >= self._wanted

    async def publish(self, jwks: Jwks) -> None:
        """Queue `jwks` for etcd (the KeyRing's `on_keys_changed` listener); returns at once."""
        self._jwks = jwks
        self._wanted += 1
        self._wake.set()

    async def wait_published(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until the newest JWKS is in etcd; returns `published`."""
        with contextlib.suppress(TimeoutError):
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(lambda: self.published), timeout)
        return self.published

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"jwks publisher {self.key}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        client, self._client = self._client, None
        await close_quietly(client, self.call_timeout)

    def status(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "published": self.published,
            "puts": self.puts,
            "last_error": self.last_error,
        }

    async def _run(self) -> None:
        attempt = 0
        while True:
            if attempt == 0 and self._written >= self._wanted:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.check_interval)
            try:
                if self._written < self._wanted:
                    await self._put()
                else:
                    await self._restore_if_missing()
                if attempt:
                    log.info("JWKS publishing recovered", extra={"key": self.key, "failures": attempt})
                attempt = 0
                self.last_error = ""
            except ETCD_ERRORS as exc:
                self.failures += 1
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                log.log(
                    level, "JWKS not published yet; retrying", extra={"key": self.key, "error": repr(exc)}
                )
                self.last_error = repr(exc)
                client, self._client = self._client, None
                await close_quietly(client, self.call_timeout)
                await asyncio.sleep(self._backoff.delay(attempt, self._rand))
                attempt += 1

    def _ensure_client(self) -> aetcd.Client:
        if self._client is None:
            self._client = self._factory.new()
        return self._client

    async def _put(self) -> None:
        jwks, version = self._jwks, self._wanted
        if jwks is None:
            return
        client = self._ensure_client()
        value = _encoded(jwks)
        if self.signer is not None:
            self._signed_generation = self.signer.generation
            value = sign_jwks(value, self.signer.current)
        await bounded(client.put(self.key.encode(), value), self.call_timeout)
        self._value = value
        self.puts += 1
        log.info("JWKS published", extra={"key": self.key, "kids": [k["kid"] for k in jwks["keys"]]})
        async with self._progress:
            self._written = max(self._written, version)
            self._progress.notify_all()

    async def _restore_if_missing(self) -> None:
        if self._jwks is None:
            return
        if self.signer is not None and self.signer.generation != self._signed_generation:
            log.info("mesh identity rotated; signing the JWKS again", extra={"key": self.key})
            self._wanted += 1
            await self._put()
            return
        client = self._ensure_client()
        got = await bounded(client.get(self.key.encode()), self.call_timeout)
        if got is None:
            log.warning("JWKS missing from etcd; publishing it again", extra={"key": self.key})
            self._wanted += 1
            await self._put()
        elif got.value != self._value:
            log.debug("another instance published a different JWKS", extra={"key": self.key})
