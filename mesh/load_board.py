"""Instances of one service tell each other their predicted wait through etcd, a few times a second.

Each instance puts `{"address", "wait_ms", "workers", "service_ms"}` under
`/ocrmesh/v1/load/<service>/<instance>` with a short lease, and reads its siblings' entries in
the same beat. It is a separate prefix from the registry on purpose: the registry's watchers (the
gateway's xDS, the BFF, mesh clients) react to every change there, and a wait changes all the time.
A poll rather than a watch: one put and one range read per beat are as cheap as a watch's events
at this rate, and a poll needs no resync logic (a missed beat is only a staler number).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aetcd

from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh.registry import RecordError, check_name
from mesh.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LOAD_PREFIX = "/ocrmesh/v1/load/"


def load_prefix(service: str) -> str:
    """Where the load entries of `service`'s instances live."""
    return f"{LOAD_PREFIX}{check_name('service', service)}/"


@dataclass(frozen=True)
class Load:
    """What one instance said about itself, and when we heard it (time.monotonic())."""

    instance_id: str
    address: str
    wait_s: float
    workers: int
    service_s: float
    heard_at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "address": self.address,
                "wait_ms": round(self.wait_s * 1000),
                "workers": self.workers,
                "service_ms": round(self.service_s * 1000),
            }
        )

    @classmethod
    def from_json(cls, instance_id: str, value: bytes, heard_at: float) -> Load:
        try:
            data = json.loads(value)
            load = cls(
                instance_id,
                str(data["address"]),
                max(0.0, float(data["wait_ms"]) / 1000),
                max(1, int(data["workers"])),
                max(0.0, float(data["service_ms"]) / 1000),
                heard_at,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"bad load entry for {instance_id}: {exc}") from None
        if not load.address:
            raise RecordError(f"load entry for {instance_id} has no address")
        return load


class LoadBoard:
    """Publishes this instance's load every `interval_s` and keeps its siblings' latest entries.

    `own()` is called each beat for this instance's current (wait_s, workers, service_s).
    Entries older than `max_age_s` count as unknown: an instance that died or lost etcd drops
    out within that time even before its lease expires.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        service: str,
        instance_id: str,
        address: str,
        own: Callable[[], tuple[float, int, float]],
        *,
        interval_s: float = 0.5,
        ttl_s: int = 3,
        call_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = load_prefix(service)
        self.key = self.prefix + check_name("instance", instance_id)
        self.instance_id = instance_id
        self.address = address
        self.own = own
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.max_age_s = max(3 * interval_s, 1.0)
        self.call_timeout = call_timeout
        self._clock = clock
        self._factory = ClientFactory(endpoints, call_timeout)
        self._client: aetcd.Client | None = None
        self._lease_id: int | None = None
        self._lease_refreshed = 0.0
        self._siblings: dict[str, Load] = {}
        self._task: asyncio.Task[None] | None = None
        self.beats = 0
        self.last_error: str | None = None

    def siblings(self) -> list[Load]:
        """Other instances' entries heard within `max_age_s`."""
        now = self._clock()
        return [s for s in self._siblings.values() if now - s.heard_at <= self.max_age_s]

    def start(self) -> None:
        """Begin beating in the background (errors are logged and retried on the next beat)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"load board {self.key}")

    async def close(self) -> None:
        """Stop beating and take this instance's entry out (bounded; the lease removes it anyway)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        client, lease_id = self._client, self._lease_id
        self._client, self._lease_id = None, None
        if client is not None and lease_id is not None:
            try:
                await bounded(client.revoke_lease(lease_id), self.call_timeout)
            except ETCD_ERRORS as exc:
                log.debug("load entry not revoked", extra={"key": self.key, "error": repr(exc)})
        await close_quietly(client, self.call_timeout)

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except ETCD_ERRORS as exc:
                if self.last_error is None:
                    log.warning("load board beat failed", extra={"key": self.key, "error": repr(exc)})
                self.last_error = repr(exc)
                client, self._client, self._lease_id = self._client, None, None
                await close_quietly(client, self.call_timeout)
            await asyncio.sleep(self.interval_s)

    async def beat(self) -> None:
        """Put this instance's load and read the siblings' (one round trip each)."""
        client = self._client or self._factory.new()
        self._client = client
        now = self._clock()
        if self._lease_id is None:
            lease = await bounded(client.lease(self.ttl_s), self.call_timeout)
            self._lease_id, self._lease_refreshed = lease.id, now
        elif now - self._lease_refreshed >= self.ttl_s / 3:
            reply = await bounded(client.refresh_lease(self._lease_id), self.call_timeout)
            if int(getattr(reply, "TTL", 0) or 0) <= 0:  # expired while etcd was away: a new one
                lease = await bounded(client.lease(self.ttl_s), self.call_timeout)
                self._lease_id = lease.id
            self._lease_refreshed = now
        wait_s, workers, service_s = self.own()
        entry = Load(self.instance_id, self.address, wait_s, workers, service_s, now)
        await bounded(
            client.put(self.key.encode(), entry.to_json().encode(), lease=self._lease_id), self.call_timeout
        )
        got = await bounded(client.get_prefix(self.prefix.encode()), self.call_timeout)
        heard = self._clock()
        siblings: dict[str, Load] = {}
        for kv in got.kvs:
            instance_id = kv.key.decode("utf-8", "replace").removeprefix(self.prefix)
            if instance_id == self.instance_id:
                continue
            try:
                siblings[instance_id] = Load.from_json(instance_id, kv.value, heard)
            except RecordError as exc:
                log.debug("ignoring load entry", extra={"error": str(exc)})
        self._siblings = siblings
        self.beats += 1
        if self.last_error is not None:
            log.info("load board beat recovered", extra={"key": self.key})
            self.last_error = None
