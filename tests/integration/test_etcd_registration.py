"""Lease registration against a real etcd: appear, keep alive, revoke, survive crashes and freezes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aetcd
import pytest

from etcd.launcher import EtcdProcess
from mesh.discovery import Discovery
from mesh.lease import Registration
from mesh.registry import Instance
from tests.integration.etcd_fixtures import (  # noqa: F401  (fixtures)
    etcd_client_fixture,
    etcd_fixture,
    eventually,
    make_etcd,
)

TTL = 2
CALL_TIMEOUT = 0.5


def instance(iid: str = "i-1", **kw: object) -> Instance:
    return Instance("ocr", iid, "127.0.0.1:50051", version="0.1.0", started_at=time.time(), **kw)  # type: ignore[arg-type]


def registration(etcd: EtcdProcess, inst: Instance) -> Registration:
    return Registration(etcd.endpoint, inst, ttl=TTL, call_timeout=CALL_TIMEOUT)


async def read_key(client: aetcd.Client, key: str) -> aetcd.Get | None:
    """The key's current kv, or None when it is absent or etcd does not answer."""
    try:
        return await asyncio.wait_for(client.get(key.encode()), 1)
    except (aetcd.ClientError, TimeoutError):
        return None


async def held_by(client: aetcd.Client, reg: Registration) -> bool:
    """The key exists, is attached to the registration's current lease, and that lease is alive."""
    got = await read_key(client, reg.key)
    if got is None or not reg.registered or got.lease != reg.lease_id:
        return False
    try:
        info = await asyncio.wait_for(client.get_lease_info(got.lease, keys=False), 1)
    except (aetcd.ClientError, TimeoutError):
        return False
    return int(info.TTL) > 0


async def test_registration_appears_under_its_key_and_close_removes_it(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    inst = instance(device="cpu", slots=2, extra={"provider": "CPUExecutionProvider"})
    reg = registration(etcd, inst)
    await reg.start()
    assert await reg.wait_registered(3)
    got = await read_key(etcd_client, "/ocrmesh/v1/services/ocr/i-1")
    assert got is not None
    assert json.loads(got.value) == inst.to_dict()
    assert json.loads(got.value)["provider"] == "CPUExecutionProvider"
    assert got.lease == reg.lease_id and reg.lease_id is not None
    info = await etcd_client.get_lease_info(got.lease, keys=False)
    assert 0 < info.TTL <= TTL and info.grantedTTL == TTL
    status = reg.status()
    assert status["registered"] and status["reregistrations"] == 0 and status["last_error"] is None

    lease_id = reg.lease_id
    await reg.close()
    # Revoked, not left to expire: gone as soon as close() returns.
    assert await read_key(etcd_client, reg.key) is None
    info = await etcd_client.get_lease_info(lease_id, keys=False)
    assert info.TTL <= 0
    assert not reg.registered and reg.lease_id is None
    await reg.close()  # idempotent


async def test_keepalive_holds_the_key_beyond_three_ttls_and_update_rewrites_it(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    async with registration(etcd, instance()) as reg:
        assert await reg.wait_registered(3)
        lease_id = reg.lease_id
        deadline = time.monotonic() + 3 * TTL + 0.5
        while time.monotonic() < deadline:
            got = await read_key(etcd_client, reg.key)
            assert got is not None and got.lease == lease_id
            await asyncio.sleep(0.25)
        assert reg.reregistrations == 0

        assert await reg.update(reg.instance.replace(weight=5, extra={"health": "draining"}))
        got = await read_key(etcd_client, reg.key)
        assert got is not None and got.lease == lease_id
        value = json.loads(got.value)
        assert value["weight"] == 5 and value["health"] == "draining"
        with pytest.raises(ValueError):
            await reg.update(instance("another-id"))


async def test_lease_lost_behind_our_back_is_replaced(etcd: EtcdProcess, etcd_client: aetcd.Client) -> None:
    async with registration(etcd, instance()) as reg:
        assert await reg.wait_registered(3)
        old = reg.lease_id
        await etcd_client.revoke_lease(old)  # as if etcd had expired it
        assert await read_key(etcd_client, reg.key) is None
        took = await eventually(lambda: held_by(etcd_client, reg), TTL + 1)
        assert reg.lease_id != old and reg.reregistrations == 1
        assert took < TTL


async def test_registration_comes_back_after_kill_and_restart(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    disc = Discovery(etcd.endpoint, "ocr", call_timeout=CALL_TIMEOUT, resync_interval=1.0)
    async with registration(etcd, instance()) as reg:
        assert await reg.wait_registered(3)
        assert await disc.start()
        await disc.wait_for(lambda eps: "i-1" in eps, 2)

        await etcd.kill()
        await asyncio.sleep(TTL + 1.0)  # longer than the TTL: the lease is gone for us
        assert not reg.registered
        assert "i-1" in disc.endpoints()  # last known set kept while etcd is down

        await etcd.restart()
        back = await eventually(lambda: held_by(etcd_client, reg), 5)
        print(f"\nre-registration after kill -9 + restart: {back:.3f}s after etcd answered")
        assert back <= 2.0
        assert reg.reregistrations >= 1
        await disc.wait_for(lambda eps: "i-1" in eps, 2)
        assert disc.endpoints()["i-1"] == reg.instance

        # And it stays: the new lease is kept alive past the old lease's restored TTL.
        await asyncio.sleep(TTL + 0.5)
        assert await held_by(etcd_client, reg)
        assert "i-1" in disc.endpoints()
    await disc.wait_for(lambda eps: "i-1" not in eps, 2)
    await disc.close()


async def test_registration_comes_back_after_a_freeze_longer_than_the_ttl(
    etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    async with registration(etcd, instance()) as reg:
        assert await reg.wait_registered(3)
        first = reg.lease_id
        etcd.pause()
        await asyncio.sleep(TTL + 1.5)
        assert not reg.registered
        etcd.resume()
        back = await eventually(lambda: held_by(etcd_client, reg), 5)
        print(f"\nre-registration after SIGSTOP {TTL + 1.5}s + SIGCONT: {back:.3f}s")
        assert back <= 2.0
        assert reg.lease_id != first
        await asyncio.sleep(TTL)
        assert await held_by(etcd_client, reg)


async def test_registers_once_etcd_starts_late(tmp_path: Path) -> None:
    proc = make_etcd(tmp_path)
    async with registration(proc, instance()) as reg:
        await asyncio.sleep(1.0)  # nothing listens yet: attempts fail, nothing raises
        assert not reg.registered and reg.last_error is not None and reg.failures >= 1
        try:
            await proc.start()
            client = aetcd.Client(host=proc.host, port=proc.client_port, timeout=1)
            try:
                took = await eventually(lambda: held_by(client, reg), 5)
                assert took <= 2.0
                assert reg.reregistrations == 0
            finally:
                await client.close()
        finally:
            await reg.close()
            await proc.stop()
