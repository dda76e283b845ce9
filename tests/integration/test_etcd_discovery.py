"""Watch-based discovery against a real etcd: changes, outages, freezes, compaction, resync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aetcd
import pytest

from etcd.launcher import EtcdProcess
from mesh.discovery import Changes, Discovery, Endpoints
from mesh.lease import Registration
from mesh.registry import Instance
from tests.integration.etcd_fixtures import (  # noqa: F401  (fixtures)
    TcpProxy,
    etcd_client_fixture,
    etcd_fixture,
    eventually,
    make_etcd,
    proxy_fixture,
)

CALL_TIMEOUT = 0.5


def instance(iid: str, service: str = "ocr", address: str = "127.0.0.1:1") -> Instance:
    return Instance(service, iid, address)


async def put(client: aetcd.Client, inst: Instance) -> None:
    """A plain put without a lease (survives etcd restarts, unlike a registration)."""
    await asyncio.wait_for(client.put(inst.key.encode(), inst.to_json().encode()), 2)


def discovery(endpoint: str, service: str | None = "ocr") -> Discovery:
    return Discovery(endpoint, service, call_timeout=CALL_TIMEOUT, resync_interval=1.0)


def has(*ids: str) -> Callable[[Mapping[str, Instance]], bool]:
    return lambda eps: set(eps) == set(ids)


async def test_sees_adds_updates_and_removes_within_a_second(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    await put(etcd_client, instance("a"))
    await put(etcd_client, instance("x", service="auth"))  # another service: not ours
    seen: list[Changes] = []
    async with discovery(etcd.endpoint) as disc:
        assert disc.synced
        assert set(disc.endpoints()) == {"a"}
        unsubscribe = disc.subscribe(lambda changes, eps: seen.append(changes))

        started = time.monotonic()
        await put(etcd_client, instance("b"))
        await disc.wait_for(has("a", "b"), 1.0)
        added_in = time.monotonic() - started

        async with Registration(etcd.endpoint, instance("c"), ttl=2, call_timeout=CALL_TIMEOUT):
            await disc.wait_for(has("a", "b", "c"), 2.0)
            started = time.monotonic()
        # Leaving the block revoked the lease: the instance disappears at once.
        await disc.wait_for(has("a", "b"), 1.0)
        revoked_in = time.monotonic() - started

        await put(etcd_client, instance("a", address="127.0.0.1:2"))
        await disc.wait_for(lambda eps: eps.get("a", instance("a")).address == "127.0.0.1:2", 1.0)
        await etcd_client.put(instance("bad").key.encode(), b"not json")  # ignored, logged
        started = time.monotonic()
        await etcd_client.delete(instance("b").key.encode())
        await disc.wait_for(has("a"), 1.0)
        removed_in = time.monotonic() - started
        print(f"\nadd {added_in:.3f}s, revoke {revoked_in:.3f}s, delete {removed_in:.3f}s")

        assert [sorted(c.added) for c in seen][:2] == [["b"], ["c"]]
        assert any(set(c.updated) == {"a"} for c in seen)
        assert sorted(seen[-1].removed) == ["b"]
        unsubscribe()
        count = len(seen)
        await put(etcd_client, instance("d"))
        await disc.wait_for(has("a", "d"), 1.0)
        assert len(seen) == count
        assert disc.status()["connected"] and disc.status()["endpoints"] == 2


async def test_keeps_the_last_set_while_etcd_is_down_and_follows_again_after(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    await put(etcd_client, instance("a"))
    await put(etcd_client, instance("b"))
    async with discovery(etcd.endpoint) as disc:
        assert set(disc.endpoints()) == {"a", "b"}
        await etcd.kill()
        await asyncio.sleep(2.5)
        assert set(disc.endpoints()) == {"a", "b"}
        assert not disc.connected and disc.last_error is not None
        await etcd.restart()
        await etcd_client.delete(instance("a").key.encode())
        await put(etcd_client, instance("c"))
        await disc.wait_for(has("b", "c"), 3.0)
        assert disc.connected


async def test_keeps_the_set_through_a_freeze_and_follows_after(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    await put(etcd_client, instance("a"))
    async with discovery(etcd.endpoint) as disc:
        etcd.pause()
        await asyncio.sleep(2.5)  # liveness gets time out; the set must stay
        assert set(disc.endpoints()) == {"a"}
        assert not disc.connected
        etcd.resume()
        await put(etcd_client, instance("b"))
        await disc.wait_for(has("a", "b"), 2.0)

        async def connected() -> bool:
            return disc.connected

        await eventually(connected, 3)


async def test_compacted_revision_forces_a_full_resync(
    etcd: EtcdProcess, etcd_client: aetcd.Client, proxy: TcpProxy
) -> None:
    await put(etcd_client, instance("a"))
    await put(etcd_client, instance("b"))
    async with discovery(proxy.endpoint) as disc:
        assert set(disc.endpoints()) == {"a", "b"}
        seen_revision = disc.revision
        await proxy.cut()  # partition: discovery cannot see what happens next
        await etcd_client.delete(instance("a").key.encode())
        await put(etcd_client, instance("c"))
        await put(etcd_client, instance("b", address="127.0.0.1:9"))
        got = await etcd_client.get_prefix(b"/ocrmesh/")
        await etcd_client.compact(got.header.revision, physical=True)
        await asyncio.sleep(1.0)
        assert set(disc.endpoints()) == {"a", "b"}  # stale but kept
        await proxy.restore()
        # Resuming at seen_revision + 1 is impossible (compacted): a full get must rebuild it.
        eps = await disc.wait_for(has("b", "c"), 4.0)
        assert eps["b"].address == "127.0.0.1:9"
        assert disc.resyncs >= 1
        assert disc.revision > seen_revision
        await put(etcd_client, instance("d"))
        await disc.wait_for(has("b", "c", "d"), 2.0)


async def test_all_services_updates_iterator_and_wait_for_timeout(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    await put(etcd_client, instance("a"))
    await put(etcd_client, instance("x", service="auth"))
    async with discovery(etcd.endpoint, service=None) as disc:
        assert set(disc.endpoints()) == {"ocr/a", "auth/x"}
        assert set(disc.by_key()) == {instance("a").key, instance("x", "auth").key}
        updates = disc.updates()
        first: Endpoints = await asyncio.wait_for(anext(updates), 1)
        assert set(first) == {"ocr/a", "auth/x"}
        await put(etcd_client, instance("y", service="auth"))
        second = await asyncio.wait_for(anext(updates), 2)
        assert set(second) == {"ocr/a", "auth/x", "auth/y"}
        await updates.aclose()
        with pytest.raises(TimeoutError):
            await disc.wait_for(lambda eps: "nope" in eps, 0.3)


async def test_start_with_etcd_down_then_syncs_when_it_comes_up(tmp_path: Path) -> None:
    proc = make_etcd(tmp_path)
    disc = discovery(proc.endpoint)
    try:
        assert not await disc.start(timeout=0.5)
        assert disc.endpoints() == {} and not disc.synced
        await proc.start()
        client = aetcd.Client(host=proc.host, port=proc.client_port, timeout=1)
        try:
            await put(client, instance("a"))
            await disc.wait_for(has("a"), 3.0)
            assert disc.synced
        finally:
            await client.close()
    finally:
        await disc.close()
        await proc.stop()
