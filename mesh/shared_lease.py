"""One lease for many registry keys of one process: one grant, one keepalive, one revoke.

`Registration` (mesh/lease.py) gives every instance its own lease, keepalive stream and etcd
channel. That is right for one service instance per process, but a process that registers many
keys (a node agent, a test harness, the control-plane benchmark's stand-ins) then costs etcd a
keepalive per key every TTL/3: at 2,000 keys and TTL 5 s, 1,200 keepalive streams a second. Keys of
one process live and die together, so they can share one lease, as etcd's own docs suggest
(a lease is attached to any number of keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import aetcd

from mesh.backoff import Backoff
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh.lease import LeaseLost
from mesh.registry import Instance
from mesh.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class SharedLease:
    """Keeps a changing set of instances registered in etcd under one lease while it is open.

    `add` (or `update`) and `remove` return at once; a background task grants the lease, writes
    what changed (puts `put_concurrency` at a time), refreshes the lease every TTL/3 and, when the
    lease is lost or etcd is unreachable, grants a new one and writes every key again, with capped
    jittered backoff, for ever (the same guarantees as `Registration`). `close()` revokes the
    lease, so every key disappears at once; `remove` deletes one key and keeps the others.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        ttl: int = 5,
        call_timeout: float = 1.0,
        put_concurrency: int = 32,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1 second, got {ttl}")
        self._factory = ClientFactory(endpoints, call_timeout)
        self.ttl = ttl
        self.call_timeout = call_timeout
        self.put_concurrency = max(1, put_concurrency)
        self._backoff = backoff or Backoff()
        self._rand = rand
        self._clock = clock
        self._wanted: dict[str, Instance] = {}
        self._written: dict[str, str] = {}  # key -> value written under the current lease
        self._unwanted: set[str] = set()  # keys to delete
        self._synced = asyncio.Event()  # etcd holds exactly what is wanted, under a live lease
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aetcd.Client | None = None
        self._closed = False
        self._lease_ttl = ttl
        self._lease_deadline = 0.0
        # Public state for status pages.
        self.lease_id: int | None = None
        self.last_error: str | None = None
        self.grants = 0
        self.failures = 0

    # -- public API ---------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """True while etcd holds every wanted key (and none removed) under a live lease."""
        return self._synced.is_set()

    def keys(self) -> list[str]:
        return sorted(self._wanted)

    def status(self) -> dict[str, Any]:
        return {
            "keys": len(self._wanted),
            "registered": self.registered,
            "lease_id": self.lease_id,
            "ttl": self._lease_ttl,
            "last_error": self.last_error,
            "grants": self.grants,
            "failures": self.failures,
        }

    async def start(self) -> None:
        """Begin registering in the background (does not wait for etcd)."""
        if self._closed:
            raise RuntimeError("shared lease is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="shared lease")

    async def add(self, instance: Instance) -> None:
        """Register `instance` (or replace its record) under the shared lease."""
        self._wanted[instance.key] = instance
        self._unwanted.discard(instance.key)
        self._changed()

    update = add

    async def remove(self, key: str) -> None:
        """Delete one key; the lease and the other keys stay."""
        if self._wanted.pop(key, None) is not None or key in self._written:
            self._unwanted.add(key)
            self._changed()

    async def wait_registered(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until etcd holds what is wanted; returns `registered`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout)
        return self.registered

    async def close(self) -> None:
        """Stop refreshing and revoke the lease (bounded), so every key disappears at once."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await self._drop_client()
        lease_id, self.lease_id = self.lease_id, None
        self._synced.clear()
        if lease_id is None:
            return
        client = self._factory.new()
        try:
            await bounded(client.revoke_lease(lease_id), self.call_timeout)
        except ETCD_ERRORS as exc:
            log.warning(
                "could not revoke the shared lease; its keys expire within its TTL",
                extra={"lease_id": lease_id, "keys": len(self._wanted), "error": repr(exc)},
            )
        finally:
            await close_quietly(client, self.call_timeout)

    # -- background loop ----------------------------------------------------------------

    def _changed(self) -> None:
        self._synced.clear()
        self._wake.set()

    def _pending(self) -> bool:
        if self._unwanted:
            return True
        return any(self._written.get(key) != inst.to_json() for key, inst in self._wanted.items())

    def _ensure_client(self) -> aetcd.Client:
        if self._client is None:
            self._client = self._factory.new()
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        await close_quietly(client, self.call_timeout)

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closed:
                try:
                    await self._grant()
                    attempt = 0
                    await self._keepalive()
                except LeaseLost as exc:
                    self._lost(str(exc))
                    attempt = 0
                except ETCD_ERRORS as exc:
                    self.failures += 1
                    self._note_error(exc, "shared lease: grant failed")
                    self.lease_id = None
                    await self._drop_client()
                await asyncio.sleep(self._backoff.delay(attempt, self._rand))
                attempt += 1
        finally:
            await self._drop_client()

    async def _grant(self) -> None:
        client = self._ensure_client()
        sent = self._clock()
        lease = await bounded(client.lease(self.ttl), self.call_timeout)
        self.lease_id = lease.id
        self._lease_ttl = int(lease.ttl) or self.ttl
        self._lease_deadline = sent + self._lease_ttl
        self._written.clear()  # nothing is under this lease yet: write every key
        self.grants += 1
        log.info("shared lease granted", extra={"lease_id": lease.id, "keys": len(self._wanted)})

    async def _sync(self, lease_id: int) -> None:
        """Write the puts and deletes that differ from what etcd holds under `lease_id`."""
        client = self._ensure_client()
        for key in sorted(self._unwanted):
            await bounded(client.delete(key.encode()), self.call_timeout)
            self._unwanted.discard(key)
            self._written.pop(key, None)
        todo = [
            (key, value)
            for key, inst in list(self._wanted.items())
            if self._written.get(key) != (value := inst.to_json())
        ]

        async def put(key: str, value: str) -> None:
            await bounded(client.put(key.encode(), value.encode(), lease=lease_id), self.call_timeout)
            self._written[key] = value

        for i in range(0, len(todo), self.put_concurrency):
            await asyncio.gather(*(put(k, v) for k, v in todo[i : i + self.put_concurrency]))
        if not self._pending():
            if not self._synced.is_set():
                log.info(
                    "shared lease: keys written", extra={"lease_id": lease_id, "keys": len(self._wanted)}
                )
            self.last_error = None
            self._synced.set()

    async def _keepalive(self) -> None:
        """Write changes as they come and refresh every TTL/3; LeaseLost when the lease is gone."""
        misses = 0
        next_refresh = self._clock()  # the first refresh right after the first write
        while not self._closed:
            lease_id = self.lease_id
            if lease_id is None:
                raise LeaseLost("no lease")
            try:
                if self._pending():
                    await self._sync(lease_id)
                if self._clock() >= next_refresh:
                    sent = self._clock()
                    reply = await bounded(self._ensure_client().refresh_lease(lease_id), self.call_timeout)
                    ttl = int(getattr(reply, "TTL", 0) or 0)
                    if ttl <= 0:
                        raise LeaseLost(f"etcd says lease {lease_id} has expired")
                    self._lease_deadline = sent + ttl
                    next_refresh = sent + self._lease_ttl / 3
                    if misses:
                        log.info("shared lease: keepalive recovered", extra={"lease_id": lease_id})
                    misses = 0
            except ETCD_ERRORS as exc:
                misses += 1
                self._note_error(exc, "shared lease: write or keepalive failed")
                await self._drop_client()
                if self._clock() >= self._lease_deadline:
                    raise LeaseLost(
                        f"lease {lease_id} outlived its {self._lease_ttl}s TTL without a refresh ({exc!r})"
                    ) from exc
                next_refresh = self._clock() + min(
                    self._lease_ttl / 3, self._backoff.delay(misses - 1, self._rand)
                )
            self._wake.clear()
            if self._pending() and not misses:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_refresh - self._clock()))

    def _lost(self, reason: str) -> None:
        if self._synced.is_set():
            log.warning(
                "shared lease lost; granting a new one", extra={"keys": len(self._wanted), "reason": reason}
            )
        self.last_error = reason
        self._synced.clear()
        self.lease_id = None

    def _note_error(self, exc: BaseException, what: str) -> None:
        first = self.last_error is None
        self.last_error = repr(exc)
        log.log(logging.WARNING if first else logging.DEBUG, what, extra={"error": repr(exc)})
