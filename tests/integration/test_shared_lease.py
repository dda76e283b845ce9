"""One lease for many keys of a process, against a real etcd: appear, remove one, survive a lost lease."""

from __future__ import annotations

import asyncio
import time

import aetcd

from etcd.launcher import EtcdProcess
from mesh.registry import Instance
from mesh.shared_lease import SharedLease
from tests.integration.etcd_fixtures import (  # noqa: F401  (fixtures)
    etcd_client_fixture,
    etcd_fixture,
    eventually,
)


def instance(iid: str, port: int = 50051) -> Instance:
    return Instance("ocr", iid, f"127.0.0.1:{port}", version="0.1.0", started_at=time.time())


async def leases_of(client: aetcd.Client, keys: list[str]) -> list[int | None]:
    found = []
    for key in keys:
        got = await asyncio.wait_for(client.get(key.encode()), 1)
        found.append(None if got is None else int(got.lease))
    return found


async def test_keys_share_one_lease_and_one_key_can_leave(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    shared = SharedLease(etcd.endpoint, ttl=2, call_timeout=0.5)
    await shared.start()
    instances = [instance(f"i-{k}", 50051 + k) for k in range(5)]
    for inst in instances:
        await shared.add(inst)
    try:
        assert await shared.wait_registered(5)
        keys = [inst.key for inst in instances]
        leases = await leases_of(etcd_client, keys)
        assert leases == [shared.lease_id] * 5
        await shared.remove(keys[0])
        await shared.update(instances[1].replace(weight=0))
        assert await shared.wait_registered(5)
        assert (await leases_of(etcd_client, keys))[0] is None
        got = await etcd_client.get(keys[1].encode())
        assert got is not None and b'"weight":0' in got.value
        await asyncio.sleep(3)  # longer than the TTL: the keepalive holds every key
        assert await leases_of(etcd_client, keys[1:]) == [shared.lease_id] * 4
    finally:
        await shared.close()
    assert await leases_of(etcd_client, [inst.key for inst in instances]) == [None] * 5  # revoked


async def test_a_lease_revoked_from_outside_is_granted_again_with_every_key(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    shared = SharedLease(etcd.endpoint, ttl=2, call_timeout=0.5)
    await shared.start()
    instances = [instance(f"j-{k}", 50061 + k) for k in range(3)]
    for inst in instances:
        await shared.add(inst)
    try:
        assert await shared.wait_registered(5)
        first = shared.lease_id
        assert first is not None
        await etcd_client.revoke_lease(first)  # every key goes at once

        async def back() -> bool:
            leases = await leases_of(etcd_client, [inst.key for inst in instances])
            return shared.lease_id not in (None, first) and leases == [shared.lease_id] * 3

        await eventually(back, timeout=5)
        assert shared.grants == 2
    finally:
        await shared.close()
