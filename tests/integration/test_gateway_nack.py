"""A config Envoy rejects: NACKed, the control plane falls back to the last good version, traffic flows."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aetcd
import grpc
from envoy.config.cluster.v3 import cluster_pb2
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from etcd.launcher import EtcdProcess
from gateway import resources as rs
from gateway.control_plane import ControlPlane, XdsService
from mesh import balancer
from mesh.processes import free_port
from mesh.registry import instance_key
from tests.integration.auth_fixtures import running_auth
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.gateway_fixtures import admin_json, cluster_hosts, login_through, start_gateway
from tests.integration.ocr_fixtures import running_ocr
from tests.integration.ocr_fixtures import stop as stop_process

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below


def bad_cluster(good: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    """The same cluster with a negative connect timeout: consistent for us, invalid for Envoy."""
    bad = cluster_pb2.Cluster()
    bad.CopyFrom(good)
    bad.connect_timeout.FromMilliseconds(-1000)
    return bad


async def test_nacked_snapshot_keeps_the_last_good_version_and_traffic(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    control_plane = ControlPlane(etcd.endpoint)
    xds = XdsService(control_plane, "127.0.0.1", 0)
    await xds.start()
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    try:
        with (
            running_auth(tmp_path, "--etcd", etcd.endpoint, "--db", db),
            running_ocr(tmp_path, "--workers", "1", "--etcd", etcd.endpoint) as ocr,
            contextlib.ExitStack() as stack,
        ):
            # Started from a thread: the control plane serving it runs on this test's event loop.
            gateway = await asyncio.to_thread(
                start_gateway, tmp_path, etcd.endpoint, "--xds", xds.address, "--node-id", "gw-nack"
            )
            stack.callback(stop_process, gateway.proc)
            cache = control_plane.cache
            await eventually(lambda: _has(gateway.admin, "ocr", ocr.address), 20)
            node = cache.nodes["gw-nack"]
            group = node.group
            good = cache.snapshot(group)
            assert good is not None and cache.last_good(group) is good
            token = await login_through(gateway.address, "nack-user")

            failures: list[str] = []
            done = 0
            stop = asyncio.Event()

            async def traffic() -> None:
                nonlocal done
                async with balancer.direct_channel(gateway.address) as channel:
                    stub = ocr_pb2_grpc.OcrServiceStub(channel)
                    while not stop.is_set():
                        try:
                            await stub.GetInfo(
                                ocr_pb2.GetInfoRequest(),
                                metadata=[("authorization", f"Bearer {token}")],
                                timeout=10,
                            )
                            done += 1
                        except grpc.aio.AioRpcError as exc:
                            failures.append(f"{exc.code().name}: {exc.details()}")
                        await asyncio.sleep(0.01)

            load = asyncio.create_task(traffic())
            stack.callback(load.cancel)
            await eventually(lambda: _at_least(lambda: done, 5), 20)

            # Publish a snapshot whose ocr cluster Envoy must reject.
            clusters = dict(good.of(rs.CLUSTER))
            clusters["ocr"] = bad_cluster(clusters["ocr"])
            bad = good.with_resources(rs.CLUSTER, clusters)
            assert bad.problems() == []  # consistent: only Envoy can tell it is wrong
            assert cache.set_snapshot(group, bad)

            await eventually(lambda: _true(node.types[rs.CLUSTER].nacked == bad.versions[rs.CLUSTER]), 20)
            assert "duration" in node.types[rs.CLUSTER].error.lower()  # Envoy says why
            # The control plane fell back to the last good snapshot and Envoy holds it, ACKed.
            assert cache.snapshot(group) is good
            assert bad.version in cache.rejected(group)
            await eventually(lambda: _true(node.types[rs.CLUSTER].acked == good.versions[rs.CLUSTER]), 20)
            dump = admin_json(gateway.admin, "/config_dump?resource=dynamic_active_clusters")
            assert {c["version_info"] for c in dump["configs"] if c["cluster"]["name"] == "ocr"} <= {
                good.versions[rs.CLUSTER]
            }

            # Traffic kept flowing, and the registry still drives new versions afterwards.
            before = done
            await eventually(lambda: _at_least(lambda: done, before + 5), 20)
            port = free_port()
            await etcd_client.put(
                instance_key("ocr", "ocr-after-nack").encode(),
                json.dumps({"address": f"127.0.0.1:{port}"}).encode(),
            )
            await eventually(lambda: _has(gateway.admin, "ocr", f"127.0.0.1:{port}"), 10)
            stop.set()
            await load
            assert failures == [], failures[:5]
    finally:
        await xds.stop()


async def _has(admin: str, cluster: str, address: str) -> bool:
    return address in cluster_hosts(admin, cluster)


async def _true(value: bool) -> bool:
    return value


async def _at_least(get: object, n: int) -> bool:
    return bool(get() >= n)  # type: ignore[operator]
