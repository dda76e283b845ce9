"""Watch-based discovery: prefix get + watch from the next revision -> the live endpoint set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aetcd

from mesh.backoff import Backoff
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh.registry import Instance, RecordError, service_prefix, services_prefix
from mesh.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Endpoints = dict[str, Instance]
"""Instances by etcd key (the pure functions) or by instance id (`Discovery.endpoints`)."""


@dataclass(frozen=True)
class KeyEvent:
    """One watch event reduced to what discovery needs."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes = b""
    revision: int = 0


@dataclass(frozen=True)
class Changes:
    """What changed between two endpoint maps (go-zero's calculateChanges, plus updates)."""

    added: Mapping[str, Instance] = field(default_factory=dict)
    removed: Mapping[str, Instance] = field(default_factory=dict)
    updated: Mapping[str, Instance] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


def parse_value(key: str, value: bytes) -> Instance | None:
    """The instance stored at `key`, or None (with a warning) when key or value is malformed."""
    try:
        return Instance.from_kv(key, value)
    except RecordError as exc:
        log.warning("ignoring malformed registry entry", extra={"key": key, "error": str(exc)})
        return None


def snapshot(kvs: Iterable[tuple[str, bytes]]) -> Endpoints:
    """An endpoint map from (key, value) pairs, skipping malformed entries."""
    result: Endpoints = {}
    for key, value in kvs:
        instance = parse_value(key, value)
        if instance is not None:
            result[key] = instance
    return result


def apply_events(current: Mapping[str, Instance], events: Iterable[KeyEvent]) -> Endpoints:
    """The map after `events`, in order; a malformed put removes the key (it is unusable)."""
    result = dict(current)
    for event in events:
        if event.kind == "delete":
            result.pop(event.key, None)
            continue
        instance = parse_value(event.key, event.value)
        if instance is None:
            result.pop(event.key, None)
        else:
            result[event.key] = instance
    return result


def diff(old: Mapping[str, Instance], new: Mapping[str, Instance]) -> Changes:
    """Added, removed and updated entries going from `old` to `new`."""
    added = {k: v for k, v in new.items() if k not in old}
    removed = {k: v for k, v in old.items() if k not in new}
    updated = {k: v for k, v in new.items() if k in old and old[k] != v}
    return Changes(added=added, removed=removed, updated=updated)


def to_key_event(event: aetcd.Event) -> KeyEvent:
    kind: Literal["put", "delete"] = "delete" if str(event.kind).upper() == "DELETE" else "put"
    return KeyEvent(
        kind=kind,
        key=event.kv.key.decode("utf-8", "replace"),
        value=event.kv.value,
        revision=int(event.kv.mod_revision),
    )


class _Resync(Exception):
    """Leave the watch and open a new one (after an outage or a missed change)."""


Subscriber = Callable[[Changes, Endpoints], object]


class Discovery:
    """The live instances of one service (or of all services when `service` is None).

    `start()` does a prefix get and watches from the next revision. Watch failures resume from
    the last seen revision + 1, a compacted revision triggers a full resync, and every
    `resync_interval` seconds a bounded prefix get checks liveness (a frozen etcd neither fails
    nor feeds a watch). While etcd is unreachable the last known set is kept, never emptied.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        service: str | None = None,
        *,
        call_timeout: float = 1.0,
        resync_interval: float = 3.0,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.service = service
        self.prefix = service_prefix(service) if service is not None else services_prefix()
        self.call_timeout = call_timeout
        self.resync_interval = resync_interval
        self._factory = ClientFactory(endpoints, call_timeout)
        self._backoff = backoff or Backoff()
        self._rand = rand
        self._state: Endpoints = {}
        self._flushed: Endpoints = {}
        self._flush_scheduled = False
        self._subscribers: list[Subscriber] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._outage = False
        # Public state for status pages.
        self.revision = 0
        self.version = 0
        self.connected = False
        self.last_error: str | None = None
        self.watch_restarts = 0
        self.resyncs = 0

    # -- public API ---------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> bool:
        """Start following etcd; wait up to `timeout` (default 2 × call timeout) for a first sync.

        Returns whether the first sync happened; if not, it keeps trying in the background.
        """
        if self._closed:
            raise RuntimeError("discovery is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"discovery {self.prefix}")
            self._task.add_done_callback(self._task_done)
        wait = 2 * self.call_timeout if timeout is None else timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), wait)
        return self._synced.is_set()

    @property
    def synced(self) -> bool:
        """True once a full get has succeeded (the set is meaningful from then on)."""
        return self._synced.is_set()

    def endpoints(self) -> Endpoints:
        """A copy of the current set, by instance id ("service/id" when watching all services)."""
        return self._project(self._state)

    def by_key(self) -> Endpoints:
        """A copy of the current set by etcd key."""
        return dict(self._state)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(changes, endpoints)` after each change; returns an unsubscribe function.

        Callbacks run on the event loop and must not block; `changes` is keyed like `endpoints`.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def wait_for(self, predicate: Callable[[Endpoints], bool], timeout: float) -> Endpoints:
        """Wait until `predicate(endpoints())` holds; returns that set, TimeoutError after timeout."""

        async def wait() -> Endpoints:
            while not predicate(current := self.endpoints()):
                await self._next_change()
            return current

        return await asyncio.wait_for(wait(), timeout)

    async def updates(self) -> AsyncGenerator[Endpoints, None]:
        """The current set, then each new set after a change (slow readers skip to the latest)."""
        seen = -1
        while not self._closed:
            if self.version == seen:
                await self._next_change()
                continue
            seen = self.version
            yield self.endpoints()

    def status(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "synced": self.synced,
            "connected": self.connected,
            "endpoints": len(self._state),
            "revision": self.revision,
            "last_error": self.last_error,
            "watch_restarts": self.watch_restarts,
            "resyncs": self.resyncs,
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self.connected = False
        self._wake_waiters()

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not self._closed and not task.cancelled() and task.exception() is not None:
            log.error(
                "discovery loop crashed; endpoints are frozen",
                exc_info=task.exception(),
                extra={"prefix": self.prefix},
            )

    # -- state --------------------------------------------------------------------------

    def _project(self, by_key: Mapping[str, Instance]) -> Endpoints:
        if self.service is not None:
            return {inst.id: inst for inst in by_key.values()}
        return {f"{inst.service}/{inst.id}": inst for inst in by_key.values()}

    def _set_state(self, new: Endpoints) -> None:
        if new == self._state:
            return
        self._state = new
        if not self._flush_scheduled:
            # Events of one etcd response arrive in one loop step: notify once per batch.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        old, new = self._flushed, self._state
        self._flushed = new
        changes = diff(old, new)
        if not changes:
            return
        self.version += 1
        log.info(
            "endpoints changed",
            extra={
                "prefix": self.prefix,
                "added": sorted(self._project(changes.added)),
                "removed": sorted(self._project(changes.removed)),
                "updated": sorted(self._project(changes.updated)),
                "count": len(new),
            },
        )
        projected = Changes(
            added=self._project(changes.added),
            removed=self._project(changes.removed),
            updated=self._project(changes.updated),
        )
        current = self._project(new)
        for callback in list(self._subscribers):
            try:
                callback(projected, dict(current))
            except Exception:  # a subscriber's bug must not stop discovery; it is logged
                log.exception("discovery subscriber failed", extra={"prefix": self.prefix})
        self._wake_waiters()

    async def _next_change(self) -> None:
        if self._closed:
            raise RuntimeError("discovery is closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _apply(self, events: Iterable[KeyEvent]) -> None:
        fresh = [e for e in events if e.revision > self.revision]
        if not fresh:
            return
        self.revision = max(e.revision for e in fresh)
        self._set_state(apply_events(self._state, fresh))

    def _replace(self, got: aetcd.GetRange) -> bool:
        """Adopt a full get; True when it differed from what the watch had built."""
        revision = int(got.header.revision)
        if revision < self.revision:
            log.warning(
                "etcd revision went backwards (new or restored cluster?); adopting its state",
                extra={"prefix": self.prefix, "was": self.revision, "now": revision},
            )
        new = snapshot((kv.key.decode("utf-8", "replace"), kv.value) for kv in got.kvs)
        differs = new != self._state
        self.revision = revision
        self._set_state(new)
        return differs

    # -- background loop ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        full = True
        prefix = self.prefix.encode()
        while not self._closed:
            client = self._factory.new()
            watch: aetcd.Watch | None = None
            try:
                if full:
                    got = await bounded(client.get_prefix(prefix), self.call_timeout)
                    self._replace(got)
                    full = False
                    self._set_synced()
                watch = await bounded(
                    client.watch_prefix(prefix, start_revision=self.revision + 1),
                    2 * self.call_timeout,
                )
                self._set_connected()
                attempt = 0
                await self._follow(client, watch)
            except aetcd.RevisionCompactedError as exc:
                self.resyncs += 1
                log.info(
                    "watch revision compacted; full resync",
                    extra={"prefix": self.prefix, "compacted": exc.compacted_revision},
                )
                full = True
                attempt = 0
            except aetcd.WatchTimeoutError as exc:
                full = True  # aetcd also times out when the new watch was compacted at once
                self._fail(exc)
            except _Resync:
                attempt = 0
            except ETCD_ERRORS as exc:
                self._fail(exc)
            finally:
                if watch is not None:
                    with contextlib.suppress(*ETCD_ERRORS):
                        await bounded(watch.cancel(), self.call_timeout)
                await close_quietly(client, self.call_timeout)
            self.watch_restarts += 1
            delay = self._backoff.delay(attempt, self._rand)
            attempt += 1
            await asyncio.sleep(delay)

    async def _follow(self, client: aetcd.Client, watch: aetcd.Watch) -> None:
        """Apply watch events; every resync_interval check liveness with a bounded get."""
        consumer = asyncio.create_task(self._consume(watch))
        prefix = self.prefix.encode()
        try:
            while not self._closed:
                done, _ = await asyncio.wait({consumer}, timeout=self.resync_interval)
                if done:
                    consumer.result()  # raises the watch's error
                    raise _Resync("watch ended")
                try:
                    got = await bounded(client.get_prefix(prefix), self.call_timeout)
                except ETCD_ERRORS as exc:
                    self._fail(exc)
                    continue
                if self._replace(got) or self._outage:
                    # The watch missed something, or etcd was away: trust it no longer.
                    self._set_connected()
                    raise _Resync("resync after liveness check")
        finally:
            await cancel_and_wait(consumer)

    async def _consume(self, watch: aetcd.Watch) -> None:
        async for event in watch:
            self._apply([to_key_event(event)])

    # -- state transitions (each logged once) -------------------------------------------

    def _set_synced(self) -> None:
        if not self._synced.is_set():
            log.info(
                "discovery synced",
                extra={"prefix": self.prefix, "count": len(self._state), "revision": self.revision},
            )
        self._synced.set()

    def _set_connected(self) -> None:
        if self._outage:
            log.info(
                "etcd reachable again",
                extra={"prefix": self.prefix, "count": len(self._state), "revision": self.revision},
            )
        self._outage = False
        self.connected = True
        self.last_error = None

    def _fail(self, exc: BaseException) -> None:
        self.last_error = repr(exc)
        self.connected = False
        if not self._outage:
            log.warning(
                "etcd unreachable; keeping the last known endpoints",
                extra={"prefix": self.prefix, "count": len(self._state), "error": repr(exc)},
            )
        else:
            log.debug("etcd still unreachable", extra={"prefix": self.prefix, "error": repr(exc)})
        self._outage = True
