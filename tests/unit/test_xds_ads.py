"""The ADS server over a real grpc.aio channel: subscriptions, ACK/NACK, stale nonces, rollback, order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from gateway import resources as rs
from gateway.cache import SnapshotCache
from gateway.profile import Profile, from_node
from gateway.snapshot_builder import Endpoint, MeshState, build_snapshot
from gateway.xds_server import AdsServer

GROUP = Profile().key


def snap(*ports: int):  # type: ignore[no-untyped-def]
    eps = tuple(Endpoint(f"o{p}", "127.0.0.1", p) for p in ports)
    return build_snapshot(MeshState({"ocr": eps}, jwks=""), Profile())


class Stream:
    """One ADS stream from the test's side: send requests, read responses with a timeout."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        self.outbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.call = stub.StreamAggregatedResources(self._requests())
        self.inbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = asyncio.Queue()
        # One reader for the stream's life: cancelling a pending read() would cancel the whole call.
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self.inbox.put(response)
        except grpc.aio.AioRpcError as exc:
            await self.inbox.put(exc)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (item := await self.outbox.get()) is not None:
            yield item

    async def send(self, type_url: str, **fields: object) -> None:
        await self.outbox.put(discovery_pb2.DiscoveryRequest(type_url=type_url, **fields))

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self.inbox.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def silent(self, wait: float = 0.3) -> bool:
        """True when nothing arrives within `wait` seconds (no answer to an ACK, say)."""
        try:
            await asyncio.wait_for(self.inbox.get(), wait)
        except TimeoutError:
            return True
        return False


@pytest.fixture(name="ads")
async def ads_fixture() -> AsyncIterator[tuple[SnapshotCache, ads_pb2_grpc.AggregatedDiscoveryServiceStub]]:
    cache = SnapshotCache()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        AdsServer(cache, lambda node: from_node(node).key), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cache, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


NODE = base_pb2.Node(id="envoy-1", cluster="ocrmesh-gateway", user_agent_name="envoy")


async def test_wildcard_then_named_ack_nack_and_rollback(ads) -> None:  # type: ignore[no-untyped-def]
    cache, stub = ads
    good = snap(50051)
    cache.set_snapshot(GROUP, good)
    s = Stream(stub)
    await s.send(rs.CLUSTER, node=NODE)
    cds = await s.recv()
    assert cds.type_url == rs.CLUSTER and cds.version_info == good.versions[rs.CLUSTER]
    assert {r.type_url for r in cds.resources} == {rs.CLUSTER} and len(cds.resources) == 2  # wildcard: all
    await s.send(rs.ENDPOINT, resource_names=["ocr"])
    eds = await s.recv()
    assert len(eds.resources) == 1  # named: only "ocr"
    # ACK both: no answer to an ACK.
    await s.send(rs.CLUSTER, version_info=cds.version_info, response_nonce=cds.nonce)
    await s.send(rs.ENDPOINT, version_info=eds.version_info, response_nonce=eds.nonce, resource_names=["ocr"])
    await s.send(rs.LISTENER)
    lds = await s.recv()
    await s.send(rs.LISTENER, version_info=lds.version_info, response_nonce=lds.nonce)
    await s.send(rs.ROUTE, resource_names=["ocrmesh-routes"])
    rds = await s.recv()
    await s.send(
        rs.ROUTE, version_info=rds.version_info, response_nonce=rds.nonce, resource_names=["ocrmesh-routes"]
    )
    assert await s.silent()
    status = cache.nodes["envoy-1"].types
    assert status[rs.LISTENER].acked == good.versions[rs.LISTENER]
    assert cache.last_good(GROUP) is good

    # A new endpoint: only EDS changes, so only EDS is pushed.
    newer = snap(50051, 50052)
    cache.set_snapshot(GROUP, newer)
    pushed = await s.recv()
    assert pushed.type_url == rs.ENDPOINT and pushed.version_info == newer.versions[rs.ENDPOINT]
    assert await s.silent()

    # A NACK of that version: recorded with its error, the group falls back to the last good.
    await s.send(
        rs.ENDPOINT,
        version_info=eds.version_info,
        response_nonce=pushed.nonce,
        resource_names=["ocr"],
        error_detail=status_pb2.Status(code=3, message="bad endpoint"),
    )
    rolled = await s.recv()
    assert rolled.version_info == good.versions[rs.ENDPOINT]
    node = cache.nodes["envoy-1"].types[rs.ENDPOINT]
    assert (node.nacked, node.error) == (newer.versions[rs.ENDPOINT], "bad endpoint")
    assert cache.snapshot(GROUP) is good
    assert newer.version in cache.rejected(GROUP)
    assert not cache.set_snapshot(GROUP, newer)  # the rejected content is not published again
    await s.outbox.put(None)


async def test_stale_nonce_is_ignored_and_clusters_go_before_listeners(ads) -> None:  # type: ignore[no-untyped-def]
    cache, stub = ads
    s = Stream(stub)
    # Subscribed before any snapshot exists: nothing comes until one is published.
    await s.send(rs.LISTENER, node=NODE)
    await s.send(rs.CLUSTER)
    assert await s.silent()
    cache.set_snapshot(GROUP, snap(50051))
    first, second = await s.recv(), await s.recv()
    assert [first.type_url, second.type_url] == [rs.CLUSTER, rs.LISTENER]
    # An answer quoting an old nonce is stale: no ACK recorded, nothing sent.
    await s.send(rs.CLUSTER, version_info="old", response_nonce="0")
    assert await s.silent()
    assert cache.nodes["envoy-1"].types[rs.CLUSTER].acked == ""
    await s.outbox.put(None)


async def test_first_request_without_node_is_refused(ads) -> None:  # type: ignore[no-untyped-def]
    _, stub = ads
    s = Stream(stub)
    await s.send(rs.CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_proxyless_node_gets_its_own_group(ads) -> None:  # type: ignore[no-untyped-def]
    cache, stub = ads
    cache.set_snapshot(
        "proxyless",
        build_snapshot(MeshState({"ocr": ()}), from_node(base_pb2.Node(cluster="ocrmesh-proxyless"))),
    )
    s = Stream(stub)
    await s.send(
        rs.LISTENER, node=base_pb2.Node(id="grpc-1", cluster="ocrmesh-proxyless"), resource_names=["ocr"]
    )
    lds = await s.recv()
    assert len(lds.resources) == 1
    listener = rs.MESSAGE[rs.LISTENER]()
    lds.resources[0].Unpack(listener)
    assert listener.name == "ocr" and listener.HasField("api_listener")
    assert cache.nodes["grpc-1"].group == "proxyless"
    await s.outbox.put(None)
