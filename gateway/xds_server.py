"""The ADS transport (state of the world): per-stream nonces, subscriptions, ACK/NACK, ordered pushes.

Like go-control-plane's `pkg/server/v3/server.go`, this holds no config: it reads snapshots from
the cache and reports what nodes ACK and NACK back to it. Rules followed (xDS protocol docs):
versions and nonces are per type URL; a request whose nonce is not the last one sent for its type
is stale and ignored; an ACK (same nonce, no error_detail) is not answered unless the resource
names changed; a NACK (error_detail set) is recorded and not answered; wildcard subscriptions
(CDS, LDS from Envoy) get every resource, named ones (EDS, RDS, and all of gRPC's) only those
named; when a snapshot changes, types are pushed in the order CDS, EDS, LDS, RDS. Incremental
(delta) streams are served by `gateway.delta_xds` over the same cache.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from gateway import resources as rs
from gateway.cache import SnapshotCache
from gateway.delta_xds import DeltaStream
from gateway.mesh_tls import may_fetch_secrets
from gateway.stream_events import requests_and_changes

log = logging.getLogger(__name__)

GroupResolver = Callable[[base_pb2.Node], str]


@dataclass
class Subscription:
    """One type URL on one stream."""

    names: frozenset[str] | None = None  # None: wildcard
    sent_version: str = ""
    nonce: str = ""


@dataclass
class StreamState:
    node_id: str = ""
    group: str = ""
    subs: dict[str, Subscription] = field(default_factory=dict)


def requested_names(request: discovery_pb2.DiscoveryRequest) -> frozenset[str] | None:
    """The names asked for, or None for a wildcard subscription (no names, or "*")."""
    names = frozenset(request.resource_names)
    return None if not names or "*" in names else names


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """StreamAggregatedResources over a SnapshotCache; `resolve_group` maps a node to its group."""

    def __init__(self, cache: SnapshotCache, resolve_group: GroupResolver) -> None:
        self.cache = cache
        self.resolve_group = resolve_group
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse],
    ) -> None:
        state = StreamState()
        try:
            async with contextlib.aclosing(requests_and_changes(request_iterator, self.cache)) as events:
                async for request in events:
                    if request is None:
                        await self._push_changes(state, context)
                    else:
                        await self._handle(state, request, context)
        finally:
            if state.node_id:
                self.cache.disconnect(state.node_id)
                log.info("xDS client disconnected", extra={"node": state.node_id})

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[
            discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
        ],
    ) -> None:
        await DeltaStream(self.cache, self.resolve_group, context).run(request_iterator)

    async def _handle(
        self,
        state: StreamState,
        request: discovery_pb2.DiscoveryRequest,
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse],
    ) -> None:
        if not state.node_id:
            if not request.node.id:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
            state.node_id = request.node.id
            try:
                state.group = self.resolve_group(request.node)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad node metadata: {exc}")
            self.cache.connect(state.node_id, state.group, request.node.user_agent_name, request.node.cluster)
            log.info("xDS client connected", extra={"node": state.node_id, "cluster": request.node.cluster})
        type_url = request.type_url
        if type_url not in rs.MESSAGE:
            log.warning(
                "ignoring a request for an unknown type", extra={"type": type_url, "node": state.node_id}
            )
            return
        if type_url == rs.SECRET and not may_fetch_secrets(context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the gateway may fetch its secrets")
        names = requested_names(request)
        sub = state.subs.get(type_url)
        if sub is None or not request.response_nonce:
            # A new subscription (or a reconnecting client, which sends no nonce): answer it.
            if request.version_info:
                self.cache.record_ack(state.node_id, state.group, type_url, request.version_info)
            state.subs[type_url] = Subscription(names=names)
            await self._send(state, type_url, context)
            return
        if request.response_nonce != sub.nonce:
            return  # stale: an answer to a response we have since superseded
        if request.HasField("error_detail"):
            self.cache.record_nack(
                state.node_id, state.group, type_url, sub.sent_version, request.error_detail.message
            )
        else:
            self.cache.record_ack(state.node_id, state.group, type_url, request.version_info)
        if names != sub.names:
            sub.names = names
            await self._send(state, type_url, context)

    async def _push_changes(
        self,
        state: StreamState,
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse],
    ) -> None:
        snapshot = self.cache.snapshot(state.group) if state.group else None
        if snapshot is None:
            return
        for type_url in rs.ORDER:
            sub = state.subs.get(type_url)
            if sub is not None and sub.sent_version != snapshot.versions[type_url]:
                await self._send(state, type_url, context)

    async def _send(
        self,
        state: StreamState,
        type_url: str,
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse],
    ) -> None:
        snapshot = self.cache.snapshot(state.group)
        if snapshot is None:
            return  # nothing built yet: the push after the first snapshot answers the request
        sub = state.subs[type_url]
        packed = []
        for message in snapshot.select(type_url, sub.names):
            item = any_pb2.Any()
            item.Pack(message)
            packed.append(item)
        sub.nonce = str(next(self._nonces))
        sub.sent_version = snapshot.versions[type_url]
        response = discovery_pb2.DiscoveryResponse(
            version_info=sub.sent_version, resources=packed, type_url=type_url, nonce=sub.nonce
        )
        await context.write(response)
        self.cache.record_sent(state.node_id, type_url, sub.sent_version)
