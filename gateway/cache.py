"""Snapshot cache: the current and last good snapshot per node group, and every node's ACK/NACK state.

Like go-control-plane's `pkg/cache/v3/simple.go`, it never sees a stream: `set_snapshot` is the one
write path, and streams wait for `changed()`. On top of that it keeps, per group, the last snapshot
every type of which some node ACKed. When a node NACKs the current version of a type, the group
falls back to that last good snapshot (so new and reconnecting nodes get config that works) and
the rejected version is refused until the content changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import resources as rs
from gateway.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass
class TypeState:
    """What one node holds of one resource type."""

    acked: str = ""
    sent: str = ""
    nacked: str = ""
    error: str = ""
    updated_at: float = 0.0


@dataclass
class NodeStatus:
    """One connected (or recently connected) Envoy or gRPC client."""

    id: str
    group: str
    user_agent: str = ""
    cluster: str = ""
    streams: int = 0
    connected_at: float = 0.0
    protocol: str = "sotw"  # or "delta" (incremental xDS)
    types: dict[str, TypeState] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "node": self.id,
            "cluster": self.cluster,
            "user_agent": self.user_agent,
            "group": self.group.split(":", 1)[0],
            "connected": self.streams > 0,
            "protocol": self.protocol,
            "connected_at": self.connected_at,
            "types": {
                rs.SHORT.get(t, t): {
                    "acked": s.acked,
                    "sent": s.sent,
                    "nacked": s.nacked,
                    "error": s.error,
                    "updated_at": s.updated_at,
                }
                for t, s in sorted(self.types.items())
            },
        }


class SnapshotCache:
    """Snapshots by group, change notification, rollback on NACK, and node statuses."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._current: dict[str, Snapshot] = {}
        self._good: dict[str, Snapshot] = {}
        self._acked_types: dict[str, set[str]] = {}
        self._rejected: dict[str, dict[str, str]] = {}
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self.generation = 0
        self.nodes: dict[str, NodeStatus] = {}
        self.status_generation = 0

    # -- snapshots ----------------------------------------------------------------------

    def snapshot(self, group: str) -> Snapshot | None:
        return self._current.get(group)

    def last_good(self, group: str) -> Snapshot | None:
        return self._good.get(group)

    def rejected(self, group: str) -> dict[str, str]:
        """Rejected snapshot version -> the error a node gave, for this group."""
        return dict(self._rejected.get(group, {}))

    def set_snapshot(self, group: str, snapshot: Snapshot) -> bool:
        """Publish `snapshot` for `group` (checked first); False when unchanged or known to be rejected."""
        snapshot.check()
        current = self._current.get(group)
        if current is not None and current.version == snapshot.version:
            return False
        if snapshot.version in self._rejected.get(group, {}):
            log.warning(
                "not publishing a snapshot a node already rejected",
                extra={"group": group[:40], "version": snapshot.version},
            )
            return False
        self._current[group] = snapshot
        # Types whose version some node of the group already ACKed need no new ACK to count as good,
        # nor do types the snapshot holds nothing of (a node never subscribes to them: secrets in
        # plaintext, for instance).
        self._acked_types[group] = {
            t
            for t in rs.ORDER
            for node in self.nodes.values()
            if node.group == group and t in node.types and node.types[t].acked == snapshot.versions[t]
        } | {t for t in rs.ORDER if not snapshot.of(t)}
        self._promote(group)
        self._bump()
        log.info("snapshot published", extra={"group": group[:40], "version": snapshot.version})
        return True

    def _bump(self) -> None:
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every stream waiting on this generation; later waiters get the new event

    async def changed(self, seen: int) -> int:
        """Wait until the generation moves past `seen`; returns the new generation."""
        while self.generation == seen:
            await self._changed.wait()
        return self.generation

    # -- node status --------------------------------------------------------------------

    def connect(
        self, node_id: str, group: str, user_agent: str, cluster: str, protocol: str = "sotw"
    ) -> NodeStatus:
        status = self.nodes.get(node_id)
        if status is None or status.group != group:
            status = NodeStatus(node_id, group, user_agent, cluster, connected_at=self._clock())
            self.nodes[node_id] = status
        status.protocol = protocol
        status.streams += 1
        status.connected_at = self._clock()
        self.status_generation += 1
        return status

    def disconnect(self, node_id: str) -> None:
        status = self.nodes.get(node_id)
        if status is not None:
            status.streams = max(0, status.streams - 1)
            self.status_generation += 1

    def _type(self, node_id: str, type_url: str) -> TypeState | None:
        status = self.nodes.get(node_id)
        if status is None:
            return None
        self.status_generation += 1
        return status.types.setdefault(type_url, TypeState())

    def record_sent(self, node_id: str, type_url: str, version: str) -> None:
        state = self._type(node_id, type_url)
        if state is not None:
            state.sent, state.updated_at = version, self._clock()

    def record_ack(self, node_id: str, group: str, type_url: str, version: str) -> None:
        state = self._type(node_id, type_url)
        if state is not None:
            state.acked, state.updated_at = version, self._clock()
        current = self._current.get(group)
        if current is None or current.versions.get(type_url) != version:
            return
        self._acked_types.setdefault(group, set()).add(type_url)
        self._promote(group)

    def _promote(self, group: str) -> None:
        current = self._current.get(group)
        if current is not None and self._acked_types.get(group, set()) >= set(rs.ORDER):
            self._good[group] = current

    def record_nack(self, node_id: str, group: str, type_url: str, version: str, error: str) -> None:
        """A node rejected `version` of `type_url`: fall back to the group's last good snapshot."""
        state = self._type(node_id, type_url)
        if state is not None:
            state.nacked, state.error, state.updated_at = version, error, self._clock()
        log.error(
            "a node rejected the config; keeping the last good version",
            extra={
                "node": node_id,
                "type": rs.SHORT.get(type_url, type_url),
                "version": version,
                "error": error,
            },
        )
        current = self._current.get(group)
        if current is None or current.versions.get(type_url) != version:
            return
        self._rejected.setdefault(group, {})[current.version] = error
        good = self._good.get(group)
        if good is not None and good is not current:
            self._current[group] = good
            self._acked_types[group] = set(rs.ORDER)
            self._bump()

    def statuses(self) -> list[dict[str, Any]]:
        return [s.summary() for _, s in sorted(self.nodes.items())]
