"""Lease registration: grant, put, keep alive, re-register for ever, revoke on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import aetcd

from mesh.backoff import Backoff
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh.registry import Instance
from mesh.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The lease is gone (etcd said TTL <= 0, or it outlived its TTL while etcd was away)."""


class Registration:
    """Keeps one instance registered in etcd under a lease for as long as it is open.

    `start()` returns at once; the registration then lives in a background task that grants a
    lease, puts the record, refreshes the lease every TTL/3 and, whenever the lease is lost or
    etcd is unreachable, grants a new one and puts again, with capped jittered backoff, for
    ever. `close()` revokes the lease so the instance disappears at once.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        instance: Instance,
        *,
        ttl: int = 5,
        call_timeout: float = 1.0,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1 second, got {ttl}")
        self._factory = ClientFactory(endpoints, call_timeout)
        self._instance = instance
        self.ttl = ttl
        self.call_timeout = call_timeout
        self._backoff = backoff or Backoff()
        self._rand = rand
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._client: aetcd.Client | None = None
        self._registered = asyncio.Event()
        self._wake = asyncio.Event()
        self._written = asyncio.Condition()
        self._wanted_version = 0
        self._written_version = -1
        self._closed = False
        self._lease_ttl = ttl
        self._lease_deadline = 0.0
        self._lost_at: float | None = None
        self._ever_registered = False
        # Public state for status pages.
        self.lease_id: int | None = None
        self.last_error: str | None = None
        self.reregistrations = 0
        self.failures = 0

    # -- public API ---------------------------------------------------------------------

    @property
    def instance(self) -> Instance:
        return self._instance

    @property
    def key(self) -> str:
        return self._instance.key

    @property
    def registered(self) -> bool:
        """True while the key is believed present: put or refreshed within the lease TTL."""
        return self._registered.is_set()

    def status(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "registered": self.registered,
            "lease_id": self.lease_id,
            "ttl": self._lease_ttl,
            "last_error": self.last_error,
            "reregistrations": self.reregistrations,
            "failures": self.failures,
        }

    async def start(self) -> None:
        """Begin registering in the background (does not wait for etcd)."""
        if self._closed:
            raise RuntimeError("registration is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"registration {self.key}")
            self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not self._closed and not task.cancelled() and task.exception() is not None:
            log.error(
                "registration loop crashed; the instance will drop out of the registry",
                exc_info=task.exception(),
                extra={"key": self.key},
            )

    async def wait_registered(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the key to be in etcd; returns `registered`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._registered.wait(), timeout)
        return self.registered

    async def update(self, instance: Instance, timeout: float | None = None) -> bool:
        """Replace the record (weight, health, …); True once etcd holds it within `timeout`.

        A False return only means "not yet": the new record is written as soon as etcd allows.
        """
        if instance.key != self._instance.key:
            raise ValueError(f"update must keep the key {self.key}, got {instance.key}")
        self._instance = instance
        self._wanted_version += 1
        wanted = self._wanted_version
        self._wake.set()
        wait = 2 * self.call_timeout if timeout is None else timeout
        with contextlib.suppress(TimeoutError):
            async with self._written:
                await asyncio.wait_for(self._written.wait_for(lambda: self._written_version >= wanted), wait)
        return self._written_version >= wanted

    async def close(self) -> None:
        """Stop refreshing and revoke the lease (bounded), so the key disappears at once."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        lease_id, self.lease_id = self.lease_id, None
        was_registered = self.registered
        self._registered.clear()
        if lease_id is None:
            return
        error: BaseException | None = None
        for _ in range(2):  # one retry on a fresh channel: a busy host can miss one deadline
            client = self._factory.new()
            try:
                await bounded(client.revoke_lease(lease_id), self.call_timeout)
                log.info("registration revoked", extra={"key": self.key, "lease_id": lease_id})
                return
            except ETCD_ERRORS as exc:
                error = exc
            finally:
                await close_quietly(client, self.call_timeout)
        if was_registered:
            log.warning(
                "could not revoke lease; the key expires within its TTL",
                extra={"key": self.key, "lease_id": lease_id, "error": repr(error)},
            )

    async def __aenter__(self) -> Registration:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- background loop ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closed:
                try:
                    await self._register()
                    attempt = 0
                    await self._keepalive()
                except LeaseLost as exc:
                    self._lose(str(exc))
                    attempt = 0
                except ETCD_ERRORS as exc:
                    self._fail(exc)
                    await self._drop_client()
                delay = self._backoff.delay(attempt, self._rand)
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            await self._drop_client()

    def _ensure_client(self) -> aetcd.Client:
        if self._client is None:
            self._client = self._factory.new()
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        await close_quietly(client, self.call_timeout)

    async def _register(self) -> None:
        """Grant a lease and put the record under it."""
        client = self._ensure_client()
        sent = self._clock()  # the lease's clock starts before we hear about it
        lease = await bounded(client.lease(self.ttl), self.call_timeout)
        self.lease_id = lease.id
        self._lease_ttl = int(lease.ttl) or self.ttl
        version = self._wanted_version
        await bounded(
            client.put(self.key.encode(), self._instance.to_json().encode(), lease=lease.id),
            self.call_timeout,
        )
        self._lease_deadline = sent + self._lease_ttl
        await self._mark_written(version)
        self._set_registered()

    async def _keepalive(self) -> None:
        """Refresh every TTL/3 and write record updates; raise LeaseLost when the lease is gone."""
        misses = 0
        while not self._closed:
            interval = self._lease_ttl / 3
            if misses:
                interval = min(interval, self._backoff.delay(misses - 1, self._rand))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            lease_id = self.lease_id
            if lease_id is None:
                raise LeaseLost("no lease")
            try:
                if self._written_version < self._wanted_version:
                    await self._put_update(lease_id)
                sent = self._clock()
                client = self._ensure_client()
                reply = await bounded(client.refresh_lease(lease_id), self.call_timeout)
            except ETCD_ERRORS as exc:
                misses += 1
                self._note_error(exc, "keepalive failed")
                await self._drop_client()  # next try on a fresh channel (and the next endpoint)
                if self._clock() >= self._lease_deadline:
                    raise LeaseLost(
                        f"lease {lease_id} outlived its {self._lease_ttl}s TTL without a refresh ({exc!r})"
                    ) from exc
                continue
            ttl = int(getattr(reply, "TTL", 0) or 0)
            if ttl <= 0:
                raise LeaseLost(f"etcd says lease {lease_id} has expired")
            self._lease_deadline = sent + ttl
            if misses:
                log.info("keepalive recovered", extra={"key": self.key, "lease_id": lease_id})
                self.last_error = None
            misses = 0

    async def _put_update(self, lease_id: int) -> None:
        version = self._wanted_version
        client = self._ensure_client()
        await bounded(
            client.put(self.key.encode(), self._instance.to_json().encode(), lease=lease_id),
            self.call_timeout,
        )
        await self._mark_written(version)
        log.info("registration updated", extra={"key": self.key, "lease_id": lease_id})

    async def _mark_written(self, version: int) -> None:
        async with self._written:
            self._written_version = max(self._written_version, version)
            self._written.notify_all()

    # -- state transitions (each logged once) -------------------------------------------

    def _set_registered(self) -> None:
        extra: dict[str, Any] = {"key": self.key, "lease_id": self.lease_id, "ttl": self._lease_ttl}
        if self._ever_registered:
            self.reregistrations += 1
            if self._lost_at is not None:
                extra["down_s"] = round(self._clock() - self._lost_at, 3)
            extra["failures"] = self.failures
            log.info("re-registered", extra=extra)
        else:
            log.info("registered", extra=extra)
        self._ever_registered = True
        self._lost_at = None
        self.failures = 0
        self.last_error = None
        self._registered.set()

    def _lose(self, reason: str) -> None:
        """The key is (or may be) gone from etcd; the loop grants a new lease next."""
        self.last_error = reason
        if self.registered:
            log.warning("registration lost", extra={"key": self.key, "reason": reason})
            self._lost_at = self._clock()
        self._registered.clear()
        self.lease_id = None

    def _fail(self, exc: BaseException) -> None:
        """A grant or put failed; a lease granted without its put just expires unused."""
        self.failures += 1
        self._note_error(exc, "registration attempt failed")
        self.lease_id = None

    def _note_error(self, exc: BaseException, what: str) -> None:
        first = self.last_error is None
        self.last_error = repr(exc)
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, what, extra={"key": self.key, "error": repr(exc)})
