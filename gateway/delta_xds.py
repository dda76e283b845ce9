"""Incremental (delta) ADS over the same snapshot cache: only changed resources and removals are sent.

Follows the xDS incremental protocol: per type, the client's known resource versions (from
`initial_resource_versions` and what we sent), its subscriptions (wildcard when its first request
names nothing or "*"), a nonce per response; an ACK or NACK quotes that nonce. The first request
of a type is always answered (Envoy waits for it to finish initialising); later ones only when
something the client subscribes to changed or went away. Resource versions are content hashes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from gateway import resources as rs
from gateway.cache import SnapshotCache
from gateway.mesh_tls import may_fetch_secrets
from gateway.snapshot import Snapshot, type_version
from gateway.stream_events import requests_and_changes

log = logging.getLogger(__name__)

GroupResolver = Callable[[base_pb2.Node], str]
DeltaContext: TypeAlias = grpc.aio.ServicerContext[
    discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
]


@dataclass
class DeltaSubscription:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
    nonce: str = ""
    sent_version: str = ""
    answered: bool = False


def resource_version(snapshot: Snapshot, type_url: str, name: str) -> str:
    return type_version({name: snapshot.of(type_url)[name]})


def plan(snapshot: Snapshot, type_url: str, sub: DeltaSubscription) -> tuple[dict[str, str], list[str]]:
    """(name -> version to send, names to remove) bringing the client up to date; pure."""
    items = snapshot.of(type_url)
    wanted = set(items) if sub.wildcard else sub.names & set(items)
    send = {}
    for name in sorted(wanted):
        version = resource_version(snapshot, type_url, name)
        if sub.known.get(name) != version:
            send[name] = version
    removed = sorted(n for n in sub.known if n not in items and (sub.wildcard or n in sub.names))
    return send, removed


class DeltaStream:
    """One DeltaAggregatedResources stream."""

    _nonces = itertools.count(1)

    def __init__(self, cache: SnapshotCache, resolve_group: GroupResolver, context: DeltaContext) -> None:
        self.cache = cache
        self.resolve_group = resolve_group
        self.context = context
        self.node_id = ""
        self.group = ""
        self.subs: dict[str, DeltaSubscription] = {}

    async def run(self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]) -> None:
        try:
            async with contextlib.aclosing(requests_and_changes(request_iterator, self.cache)) as events:
                async for request in events:
                    if request is None:
                        for type_url in rs.ORDER:
                            if type_url in self.subs:
                                await self._send(type_url, force=False)
                    else:
                        await self._handle(request)
        finally:
            if self.node_id:
                self.cache.disconnect(self.node_id)

    async def _handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if not self.node_id:
            if not request.node.id:
                await self.context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id"
                )
            self.node_id = request.node.id
            try:
                self.group = self.resolve_group(request.node)
            except ValueError as exc:
                await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad node metadata: {exc}")
            node = request.node
            self.cache.connect(self.node_id, self.group, node.user_agent_name, node.cluster, protocol="delta")
        type_url = request.type_url
        if type_url not in rs.MESSAGE:
            return
        if type_url == rs.SECRET and not may_fetch_secrets(self.context):
            await self.context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only the gateway may fetch its secrets"
            )
        sub = self.subs.get(type_url)
        first = sub is None
        if sub is None:
            sub = self.subs[type_url] = DeltaSubscription()
            sub.known.update(request.initial_resource_versions)
            names = set(request.resource_names_subscribe)
            sub.wildcard = not names or "*" in names
        if request.response_nonce:
            if request.response_nonce != sub.nonce:
                return  # stale
            if request.HasField("error_detail"):
                self.cache.record_nack(
                    self.node_id, self.group, type_url, sub.sent_version, request.error_detail.message
                )
                # What the client holds is unknown after a NACK: resend everything it wants.
                sub.known.clear()
            else:
                self.cache.record_ack(self.node_id, self.group, type_url, sub.sent_version)
        for name in request.resource_names_subscribe:
            if name == "*":
                sub.wildcard = True
            else:
                sub.names.add(name)
        for name in request.resource_names_unsubscribe:
            if name == "*":
                sub.wildcard = False
            else:
                sub.names.discard(name)
                sub.known.pop(name, None)
        changed_names = bool(request.resource_names_subscribe or request.resource_names_unsubscribe)
        if first or changed_names:
            await self._send(type_url, force=first)

    async def _send(self, type_url: str, *, force: bool) -> None:
        snapshot = self.cache.snapshot(self.group) if self.group else None
        sub = self.subs[type_url]
        if snapshot is None:
            return  # answered when the first snapshot is published
        send, removed = plan(snapshot, type_url, sub)
        if not send and not removed and not (force or not sub.answered):
            return
        items = snapshot.of(type_url)
        resources = []
        for name, version in send.items():
            packed = any_pb2.Any()
            packed.Pack(items[name])
            resources.append(discovery_pb2.Resource(name=name, version=version, resource=packed))
        sub.nonce = f"d{next(self._nonces)}"
        sub.sent_version = snapshot.versions[type_url]
        sub.answered = True
        await self.context.write(
            discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=sub.sent_version,
                type_url=type_url,
                resources=resources,
                removed_resources=removed,
                nonce=sub.nonce,
            )
        )
        sub.known.update(send)
        for name in removed:
            sub.known.pop(name, None)
        self.cache.record_sent(self.node_id, type_url, sub.sent_version)
