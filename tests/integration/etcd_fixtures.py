"""Shared etcd fixtures: a real etcd per test on free loopback ports, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aetcd
import pytest

from etcd.launcher import EtcdProcess
from mesh.processes import free_port


def make_etcd(tmp_path: Path, name: str = "etcd", **options: Any) -> EtcdProcess:
    """An etcd in tmp_path with fast raft timing: one member elects itself in ~50 ms, not ~1 s
    (`options`: more EtcdProcess arguments, e.g. its identity)."""
    return EtcdProcess(
        tmp_path / name,
        heartbeat_ms=10,
        election_timeout_ms=100,
        start_timeout=15.0,
        stop_grace=5.0,
        **options,
    )


@pytest.fixture(name="etcd")
async def etcd_fixture(tmp_path: Path) -> AsyncIterator[EtcdProcess]:
    """A started single-node etcd; always stopped (SIGTERM, then SIGKILL) after the test."""
    proc = make_etcd(tmp_path)
    try:
        await proc.start()
        yield proc
    finally:
        await proc.stop()


@pytest.fixture(name="etcd_client")
async def etcd_client_fixture(etcd: EtcdProcess) -> AsyncIterator[aetcd.Client]:
    """A plain aetcd client for the test's own checks (1 s call timeout)."""
    client = aetcd.Client(host=etcd.host, port=etcd.client_port, timeout=1)
    try:
        yield client
    finally:
        with contextlib.suppress(aetcd.ClientError, TimeoutError):
            await asyncio.wait_for(client.close(), 2)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.02) -> float:
    """Poll `check` until it is true; returns the seconds it took, AssertionError on timeout."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class TcpProxy:
    """Forwards a loopback port to etcd; `cut()` is a network partition (RST, refuse new)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 2)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        for task in tasks:
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # OSError: the other side went away; the connection is closed below either way.
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.transport.abort()
            self._conns.discard(writer)


@pytest.fixture(name="proxy")
async def proxy_fixture(etcd: EtcdProcess) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(etcd.host, etcd.client_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
