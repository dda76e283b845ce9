"""Watch-based discovery: prefix get + watch from the next revision -> the live endpoint set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import aetcd
from aetcd import rpc, utils

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


async def count_keys(client: aetcd.Client, prefix: bytes, timeout: float) -> int:
    """How many keys are under `prefix`: a count-only range, which etcd answers from its index
    without reading or sending any value (aetcd has no call for it)."""
    await client.connect()
    request = rpc.RangeRequest(key=prefix, range_end=utils.prefix_range_end(prefix), count_only=True)
    reply = await client.kvstub.Range(request, timeout=timeout, metadata=client.metadata)
    return int(reply.count)


class _Resync(Exception):
    """Leave the watch and open a new one (after an outage or a missed change)."""


Subscriber = Callable[[Changes, Mapping[str, Instance]], object]


class Discovery:
    """The live instances of one service (or of all services when `service` is None).

    `start()` does a prefix get and watches from the next revision. Watch failures resume from
    the last seen revision + 1, a compacted revision triggers a full resync, and every
    `resync_interval` seconds a bounded call checks liveness (a frozen etcd neither fails nor
    feeds a watch): a count of the keys under the prefix (etcd answers it from its index, no
    values read or sent), with a full prefix get every `full_check_every`-th time instead. A count
    that differs from the watch's set, or a get that does, means a resync. While etcd is
    unreachable the last known set is kept, never emptied.

    Each change costs in proportion to what changed, not to the size of the set: at 2,000
    endpoints and 200 watchers a full get per check made etcd send 133,000 records a second.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        service: str | None = None,
        *,
        call_timeout: float = 1.0,
        resync_interval: float = 3.0,
        full_check_every: int = 20,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.service = service
        self.prefix = service_prefix(service) if service is not None else services_prefix()
        self.call_timeout = call_timeout
        self.resync_interval = resync_interval
        self.full_check_every = max(1, full_check_every)
        self._factory = ClientFactory(endpoints, call_timeout)
        self._backoff = backoff or Backoff()
        self._rand = rand
        self._state: Endpoints = {}
        self._projected: Endpoints = {}  # _state keyed like endpoints(), kept in step with it
        self._raw: dict[str, bytes] = {}  # every key under the prefix (malformed ones too): its value
        self._dirty: dict[str, Instance | None] = {}  # key -> its value at the last flush
        self._flush_scheduled = False
        self._checks = 0
        self._full_revision = 0  # revision of the last full get
        self._events = 0  # watch events applied
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
        return dict(self._projected)

    def by_key(self) -> Endpoints:
        """A copy of the current set by etcd key."""
        return dict(self._state)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(changes, endpoints)` after each change; returns an unsubscribe function.

        Callbacks run on the event loop and must not block; `changes` is keyed like `endpoints`,
        a read-only view of the current set (copy it to keep it: a copy per callback per change
        was most of a watcher's cost at 2,000 endpoints).
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def wait_for(
        self, predicate: Callable[[Mapping[str, Instance]], bool], timeout: float
    ) -> Endpoints:
        """Wait until `predicate(endpoints)` holds; returns that set, TimeoutError after timeout.

        The predicate sees a read-only view of the current set (no copy per change)."""

        async def wait() -> Endpoints:
            while not predicate(MappingProxyType(self._projected)):
                await self._next_change()
            return self.endpoints()

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
        return {self._name(inst): inst for inst in by_key.values()}

    def _name(self, inst: Instance) -> str:
        return inst.id if self.service is not None else f"{inst.service}/{inst.id}"

    def _set(self, key: str, instance: Instance | None) -> None:
        """Put (or with None remove) one key of the state, noting it for the next flush."""
        old = self._state.get(key)
        if old == instance:
            return
        if key not in self._dirty:
            self._dirty[key] = old
        if old is not None:
            del self._state[key]
            self._projected.pop(self._name(old), None)
        if instance is not None:
            self._state[key] = instance
            self._projected[self._name(instance)] = instance
        if not self._flush_scheduled:
            # Events of one etcd response arrive in one loop step: notify once per batch.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        added: Endpoints = {}
        removed: Endpoints = {}
        updated: Endpoints = {}
        for key, old in dirty.items():
            new = self._state.get(key)
            if old is None and new is not None:
                added[self._name(new)] = new
            elif old is not None and new is None:
                removed[self._name(old)] = old
            elif old is not None and new is not None and old != new:
                updated[self._name(new)] = new
        changes = Changes(added=added, removed=removed, updated=updated)
        if not changes:
            return
        self.version += 1
        log.info(
            "endpoints changed",
            extra={
                "prefix": self.prefix,
                "added": sorted(added),
                "removed": sorted(removed),
                "updated": sorted(updated),
                "count": len(self._state),
            },
        )
        view = MappingProxyType(self._projected)
        for callback in list(self._subscribers):
            try:
                callback(changes, view)
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
        for event in events:
            # Older than what we hold, or already in the last full get. Equal revisions from the
            # watch are kept: every key of one etcd transaction carries the same revision.
            if event.revision < self.revision or event.revision <= self._full_revision:
                continue
            self.revision = event.revision
            self._events += 1
            if event.kind == "delete":
                self._raw.pop(event.key, None)
                self._set(event.key, None)
            else:
                self._raw[event.key] = event.value
                self._set(event.key, parse_value(event.key, event.value))  # malformed: unusable

    def _replace(self, got: aetcd.GetRange) -> bool:
        """Adopt a full get; True when it differed from what the watch had built."""
        revision = int(got.header.revision)
        if revision < self.revision:
            log.warning(
                "etcd revision went backwards (new or restored cluster?); adopting its state",
                extra={"prefix": self.prefix, "was": self.revision, "now": revision},
            )
        raw = {kv.key.decode("utf-8", "replace"): kv.value for kv in got.kvs}
        self.revision = self._full_revision = revision
        if raw == self._raw:
            return False  # the same bytes: nothing to parse (most periodic checks at scale)
        self._raw = raw
        new = snapshot(raw.items())
        differs = new != self._state
        if differs:
            for key in [k for k in self._state if k not in new]:
                self._set(key, None)
            for key, instance in new.items():
                self._set(key, instance)
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
        """Apply watch events; every resync_interval check liveness with a bounded call.

        A check that disagrees with the watch is normal while events are on their way (a burst of
        registrations): only a disagreement at two checks in a row with no event in between means
        the watch is stuck. Resyncing at the first one made every watcher re-read the whole
        prefix during bursts, and at 2,000 endpoints those reads timed out and fed a resync storm.
        """
        consumer = asyncio.create_task(self._consume(watch))
        prefix = self.prefix.encode()
        suspect: int | None = None  # self._events when a check last disagreed
        checked_at = self._events  # self._events at the last check
        try:
            while not self._closed:
                done, _ = await asyncio.wait({consumer}, timeout=self.resync_interval)
                if done:
                    consumer.result()  # raises the watch's error
                    raise _Resync("watch ended")
                self._checks += 1
                try:
                    if self._checks % self.full_check_every:
                        count = await bounded(
                            count_keys(client, prefix, self.call_timeout), self.call_timeout
                        )
                        differs = count != len(self._raw)
                    else:
                        got = await bounded(client.get_prefix(prefix), self.call_timeout)
                        # Events the watch applied while the get was on its way are newer than it.
                        differs = int(got.header.revision) >= self.revision and self._replace(got)
                except ETCD_ERRORS as exc:
                    if self._events != checked_at:
                        # The watch delivered events meanwhile: etcd is there, the check was only
                        # slow (a busy client loop). Not an outage, which would mean a resync.
                        checked_at = self._events
                        continue
                    self._fail(exc)
                    continue
                checked_at = self._events
                if self._outage:
                    self._set_connected()  # etcd was away: the watch may have died silently
                    raise _Resync("resync after an outage")
                if not differs:
                    suspect = None
                elif suspect == self._events:
                    raise _Resync("the watch fell behind")
                else:
                    suspect = self._events
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
