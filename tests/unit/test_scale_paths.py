"""The paths that keep a change's cost in proportion to its size: memoised snapshot builds,
coalesced rebuilds, discovery's incremental flush, the mesh client's incremental endpoint update."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

from gateway.profile import PROXYLESS, Profile
from gateway.rebuild_schedule import RebuildSchedule
from gateway.snapshot_builder import BuildMemo, Endpoint, MeshState, build_snapshot
from mesh.discovery import Discovery, KeyEvent
from mesh.mesh_client import MeshClient
from mesh.registry import Instance, instance_key


def endpoints(n: int, skip: int = 0) -> tuple[Endpoint, ...]:
    return tuple(
        Endpoint(f"i{k}", f"127.1.{k // 250}.{k % 250 + 1}", 9000 + k % 7, zone="ab"[k % 2], weight=k % 4)
        for k in range(skip, n)
    )


def test_memoised_builds_equal_full_builds_through_changes() -> None:
    for profile in (Profile(), PROXYLESS, Profile(port=9443, cors_origins=("*",))):
        memo = BuildMemo()
        states = [
            MeshState({"ocr": endpoints(50)}),
            MeshState({"ocr": endpoints(50, skip=1)}),  # one gone
            MeshState({"ocr": (*endpoints(50, skip=1), Endpoint("new", "127.9.0.1", 1))}),
            MeshState({"ocr": endpoints(50, skip=1), "auth": endpoints(3)}, jwks='{"keys":[]}'),
            MeshState({"ocr": endpoints(50)}, issuer="other"),
            MeshState({}),
        ]
        for state in states:
            full = build_snapshot(state, profile)
            memoised = build_snapshot(state, profile, memo)
            assert memoised.versions == full.versions
            assert memoised.resources == full.resources


def test_memo_keeps_only_what_the_last_build_used() -> None:
    memo = BuildMemo()
    build_snapshot(MeshState({"ocr": endpoints(30)}), Profile(), memo)
    build_snapshot(MeshState({"ocr": endpoints(5)}), Profile(), memo)
    assert len(memo._lb) == 5
    assert len(memo._fixed) == 1


def put(service: str, instance_id: str, address: str, revision: int) -> KeyEvent:
    value = json.dumps({"address": address}).encode()
    return KeyEvent("put", instance_key(service, instance_id), value, revision)


def delete(service: str, instance_id: str, revision: int) -> KeyEvent:
    return KeyEvent("delete", instance_key(service, instance_id), b"", revision)


async def test_discovery_flush_reports_each_change_once_and_batches_a_step() -> None:
    discovery = Discovery("127.0.0.1:1", "ocr")
    seen: list[tuple[list[str], list[str], list[str], int]] = []
    discovery.subscribe(
        lambda c, eps: seen.append((sorted(c.added), sorted(c.removed), sorted(c.updated), len(eps)))
    )
    discovery._apply([put("ocr", "a", "127.0.0.1:1", 2), put("ocr", "b", "127.0.0.1:2", 3)])
    discovery._apply([put("ocr", "c", "127.0.0.1:3", 4)])
    await asyncio.sleep(0)
    discovery._apply([put("ocr", "a", "127.0.0.1:9", 5), delete("ocr", "b", 6)])
    await asyncio.sleep(0)
    discovery._apply([put("ocr", "d", "127.0.0.1:4", 7), delete("ocr", "d", 8)])  # in and out: nothing
    await asyncio.sleep(0)
    discovery._apply([put("ocr", "old", "127.0.0.1:5", 3)])  # an old revision is ignored
    await asyncio.sleep(0)
    discovery._apply([KeyEvent("put", instance_key("ocr", "bad"), b"not json", 9)])  # never an endpoint
    await asyncio.sleep(0)
    assert seen == [(["a", "b", "c"], [], [], 3), ([], ["b"], ["a"], 2)]
    assert sorted(discovery.endpoints()) == ["a", "c"]
    assert discovery.endpoints()["a"].address == "127.0.0.1:9"
    assert discovery.version == 2
    assert len(discovery._raw) == 3  # a, c and the malformed one: what a count of etcd's keys says


def instance(instance_id: str, address: str, started_at: float = 0.0) -> Instance:
    return Instance(service="ocr", id=instance_id, address=address, started_at=started_at)


async def test_mesh_client_applies_changes_like_a_full_set() -> None:
    discovery = Discovery("127.0.0.1:1", "ocr")
    client = MeshClient("ocr", discovery=discovery)
    discovery.subscribe(client._on_change)
    steps = [
        [put("ocr", "a", "127.0.0.1:1", 2), put("ocr", "b", "127.0.0.1:2", 3)],
        [put("ocr", "a", "127.0.0.1:7", 4)],  # moved
        [delete("ocr", "b", 5), put("ocr", "c", "127.0.0.1:2", 6)],  # address reused by another
        [put("ocr", "d", "127.0.0.1:7", 7)],  # shares a's address: the full set decides
        [delete("ocr", "d", 8)],
    ]
    for events in steps:
        discovery._apply(events)
        await asyncio.sleep(0)
        reference = MeshClient("ocr", instances=discovery.endpoints().values())
        assert client.endpoints() == reference.endpoints()
        assert client.instances() == reference.instances()
        assert {a: s.instance_id for a, s in client._stats.items()} == {
            a: s.instance_id for a, s in reference._stats.items()
        }
    await client.close()


async def test_rebuild_schedule_runs_a_lone_request_at_once_and_coalesces_a_burst() -> None:
    loop = asyncio.get_running_loop()
    ran: list[float] = []

    def rebuild() -> None:
        ran.append(loop.time())
        time.sleep(0.05)  # a build that takes 50 ms of the loop

    schedule = RebuildSchedule(rebuild, coalesce_max_s=1.0)
    asked = loop.time()
    schedule.request()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(ran) == 1 and ran[0] - asked < 0.02  # quiet until now: at once
    for _ in range(50):  # a burst right after that build
        schedule.request()
    assert schedule.pending
    await asyncio.sleep(0.2)
    assert len(ran) == 2  # one rebuild for the whole burst
    assert ran[1] - ran[0] >= 0.09  # it waited as long as the last build took
    assert (schedule.requests, schedule.rebuilds) == (51, 2)
    schedule.request()
    schedule.cancel()
    await asyncio.sleep(0.2)
    assert len(ran) == 2


async def test_discovery_keeps_every_key_of_one_transaction() -> None:
    discovery = Discovery("127.0.0.1:1", "ocr")
    discovery._apply([put("ocr", "a", "127.0.0.1:1", 5)])
    discovery._apply([put("ocr", "b", "127.0.0.1:2", 5)])  # same revision: the same etcd txn
    discovery._apply([put("ocr", "c", "127.0.0.1:3", 4)])  # older: ignored
    await asyncio.sleep(0)
    assert sorted(discovery.endpoints()) == ["a", "b"]


def full_get(revision: int, kvs: dict[str, bytes]) -> Any:
    """What aetcd's get_prefix returns, as far as Discovery reads it."""
    items = [SimpleNamespace(key=k.encode(), value=v) for k, v in kvs.items()]
    return SimpleNamespace(header=SimpleNamespace(revision=revision), kvs=items)


async def test_a_full_get_of_the_same_bytes_changes_nothing_and_parses_nothing() -> None:
    discovery = Discovery("127.0.0.1:1", "ocr")
    events = [put("ocr", "a", "127.0.0.1:1", 2), put("ocr", "b", "127.0.0.1:2", 3)]
    discovery._apply(events)
    await asyncio.sleep(0)
    same = {e.key: e.value for e in events}
    assert discovery._replace(full_get(3, same)) is False
    changed = {**same, instance_key("ocr", "b"): json.dumps({"address": "127.0.0.1:9"}).encode()}
    assert discovery._replace(full_get(4, changed)) is True
    await asyncio.sleep(0)
    assert discovery.endpoints()["b"].address == "127.0.0.1:9"
    assert discovery._replace(full_get(5, {})) is True
    await asyncio.sleep(0)
    assert discovery.endpoints() == {}
