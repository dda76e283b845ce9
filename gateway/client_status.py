"""Publishes each xDS client's ACK/NACK state in etcd (mesh.xds_client_records), for `ocrmesh status`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import aetcd

from gateway.cache import SnapshotCache
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh.tasks import cancel_and_wait
from mesh.xds_client_records import client_key

log = logging.getLogger(__name__)


class ClientStatusPublisher:
    """Writes every node's status under a lease of `ttl` seconds, refreshed every `interval`.

    The lease makes the entries vanish when the control plane is gone. Writes happen only when a
    status changed; etcd errors drop the client and lease and start over on the next round.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        cache: SnapshotCache,
        control_plane: str,
        *,
        interval: float = 1.0,
        ttl: int = 10,
        call_timeout: float = 1.0,
    ) -> None:
        self.cache = cache
        self.control_plane = control_plane
        self.interval = interval
        self.ttl = ttl
        self.call_timeout = call_timeout
        self._factory = ClientFactory(endpoints, call_timeout)
        self._task: asyncio.Task[None] | None = None
        self._client: aetcd.Client | None = None
        self._lease_id: int | None = None
        self.writes = 0
        self.last_error = ""

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="xds client status")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._client is not None and self._lease_id is not None:
            try:  # the entries go at once rather than at the end of the TTL
                await bounded(self._client.revoke_lease(self._lease_id), self.call_timeout)
            except ETCD_ERRORS as exc:
                log.info(
                    "could not revoke the status lease; entries expire with it", extra={"error": repr(exc)}
                )
        await close_quietly(self._client, self.call_timeout)
        self._client = None

    async def _run(self) -> None:
        seen = -1
        while True:
            try:
                if self._client is None:
                    self._client = self._factory.new()
                if self._lease_id is None:
                    lease = await bounded(self._client.lease(self.ttl), self.call_timeout)
                    self._lease_id, seen = int(lease.id), -1
                else:
                    reply = await bounded(self._client.refresh_lease(self._lease_id), self.call_timeout)
                    if int(getattr(reply, "TTL", 0) or 0) <= 0:
                        self._lease_id = None
                        continue
                if self.cache.status_generation != seen:
                    seen = self.cache.status_generation
                    for status in self.cache.statuses():
                        value = json.dumps({**status, "control_plane": self.control_plane}).encode()
                        key = client_key(status["node"]).encode()
                        await bounded(self._client.put(key, value, lease=self._lease_id), self.call_timeout)
                        self.writes += 1
                self.last_error = ""
            except ETCD_ERRORS as exc:
                self.last_error = repr(exc)
                await close_quietly(self._client, self.call_timeout)
                self._client, self._lease_id = None, None
            await asyncio.sleep(self.interval)
