"""Incremental xDS: an Envoy on DELTA_GRPC gets its config, endpoint changes and a NACK fallback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aetcd
from envoy.config.cluster.v3 import cluster_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from etcd.launcher import EtcdProcess
from gateway import resources as rs
from gateway.control_plane import ControlPlane, XdsService
from gateway.delta_xds import DeltaSubscription, plan
from gateway.profile import Profile
from gateway.snapshot_builder import Endpoint, MeshState, build_snapshot
from mesh import balancer
from mesh.processes import free_port
from mesh.registry import instance_key
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.gateway_fixtures import (
    cluster_hosts,
    healthy,
    healthy_in_envoy,
    stand_in_ocr_fixture,
    start_gateway,
)
from tests.integration.ocr_fixtures import stop

__all__ = ["etcd_client_fixture", "etcd_fixture", "stand_in_ocr_fixture"]  # pytest fixtures used below


def test_plan_sends_only_changes_and_removals() -> None:
    one = build_snapshot(MeshState({"ocr": (Endpoint("a", "127.0.0.1", 1),)}), Profile())
    two = build_snapshot(MeshState({"ocr": (Endpoint("b", "127.0.0.1", 2),), "extra": ()}), Profile())
    sub = DeltaSubscription(wildcard=True)
    send, removed = plan(one, rs.CLUSTER, sub)
    assert set(send) == {"ocr", "auth"} and removed == []
    sub.known.update(send)
    send, removed = plan(two, rs.CLUSTER, sub)
    assert set(send) == {"extra"} and removed == []  # ocr and auth clusters did not change
    named = DeltaSubscription(names={"ocr"}, known={"ocr": "old", "gone": "v"})
    send, removed = plan(two, rs.ENDPOINT, named)
    assert list(send) == ["ocr"] and removed == []  # "gone" was never subscribed by name
    named.names.add("gone")
    assert plan(two, rs.ENDPOINT, named)[1] == ["gone"]


async def test_envoy_on_delta_xds(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client, stand_in_ocr: str
) -> None:
    control_plane = ControlPlane(etcd.endpoint)
    xds = XdsService(control_plane, "127.0.0.1", 0)
    await xds.start()
    try:
        with contextlib.ExitStack() as stack:
            args = ("--xds", xds.address, "--xds-delta", "--node-id", "gw-delta")
            gateway = await asyncio.to_thread(start_gateway, tmp_path, etcd.endpoint, *args)
            stack.callback(stop, gateway.proc)
            node = control_plane.cache.nodes["gw-delta"]
            assert node.protocol == "delta" and all(
                node.types[t].acked for t in rs.ORDER if t != rs.SECRET
            ), node.types
            stand_in = stand_in_ocr
            await eventually(lambda: healthy_in_envoy(gateway.admin, stand_in), 20)
            # Routed through Envoy to the upstream (health route -> ocr cluster).
            async with balancer.direct_channel(gateway.address) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Endpoint additions and removals arrive as deltas.
            extra = f"127.0.0.1:{free_port()}"
            key = instance_key("ocr", "delta-extra").encode()
            await etcd_client.put(key, json.dumps({"address": extra}).encode())
            await eventually(lambda: _listed(gateway.admin, extra, True), 10)
            await etcd_client.delete(key)
            await eventually(lambda: _listed(gateway.admin, extra, False), 10)
            # A NACK on a delta stream: recorded, and the group falls back to its last good snapshot.
            group = node.group
            good = control_plane.cache.snapshot(group)
            assert good is not None
            await eventually(lambda: _true(control_plane.cache.last_good(group) is good), 10)
            clusters = dict(good.of(rs.CLUSTER))
            bad_ocr = cluster_pb2.Cluster()
            bad_ocr.CopyFrom(clusters["ocr"])
            bad_ocr.connect_timeout.FromMilliseconds(-1000)
            clusters["ocr"] = bad_ocr
            bad = good.with_resources(rs.CLUSTER, clusters)
            assert control_plane.cache.set_snapshot(group, bad)
            await eventually(lambda: _true(node.types[rs.CLUSTER].nacked == bad.versions[rs.CLUSTER]), 20)
            assert control_plane.cache.snapshot(group) is good
            await eventually(lambda: _true(node.types[rs.CLUSTER].acked == good.versions[rs.CLUSTER]), 20)
            assert stand_in in healthy(gateway.admin, "ocr")
    finally:
        await xds.stop()


async def _listed(admin: str, address: str, want: bool) -> bool:
    return (address in await asyncio.to_thread(cluster_hosts, admin, "ocr")) == want


async def _true(value: bool) -> bool:
    return value
