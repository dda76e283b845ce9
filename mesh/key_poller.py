"""Polling one small etcd key: a bounded get every interval, a callback whenever its revision moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aetcd

from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly


async def poll_key(
    factory: ClientFactory,
    key: str,
    *,
    interval: float,
    call_timeout: float,
    on_change: Callable[[bytes | None], object],
    on_read: Callable[[], None] = lambda: None,
    on_error: Callable[[BaseException], None] = lambda exc: None,
) -> None:
    """Read `key` every `interval` seconds until cancelled; never returns.

    `on_change(value)` runs on the first read and whenever the key's mod revision changes (None:
    the key is absent); `on_read()` after every successful get, `on_error(exc)` after every failed
    one, which also drops the client so the next try connects afresh (and to the next endpoint).
    Polling, not watching: one small key needs no watch, and a poll needs no re-establishment after
    etcd is killed, frozen or compacted.
    """
    client: aetcd.Client | None = None
    seen_revision = -1
    try:
        while True:
            try:
                if client is None:
                    client = factory.new()
                got = await bounded(client.get(key.encode()), call_timeout)
                on_read()
                revision = int(got.mod_revision) if got is not None else 0
                if revision != seen_revision:
                    seen_revision = revision
                    on_change(got.value if got is not None else None)
            except ETCD_ERRORS as exc:
                on_error(exc)
                await close_quietly(client, call_timeout)
                client = None
            await asyncio.sleep(interval)
    finally:
        await close_quietly(client, call_timeout)
