"""The child processes of `ocrmesh bench control-plane`: stand-in registrars, watchers, the control plane.

Each runs as `python -m bench.studies.control_plane_parts ROLE ...`, reads one command per line on
stdin and answers with one JSON object per line on stdout, so the bench times them from outside:
CLOCK_MONOTONIC (`time.monotonic()`) is one clock for every process on the machine.

- `registrar`: N stand-in instances of one service registered with the project's own registration
  code (real leases, real keepalives): one lease per instance (`--lease-mode per-key`, what every
  service does today) or one lease for the whole process (`--lease-mode shared`).
- `watchers`: M real `MeshClient`s, each with its own `Discovery` watch on the service; prints when
  all M have seen a probe instance come or go.
- `control-plane`: the xDS control plane (`ControlPlane` + `XdsService`), answering build stats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psutil

from bench.stop_signals import run_stoppable
from gateway.control_plane import ControlPlane, XdsService
from gateway.snapshot_builder import MeshState
from mesh.discovery import Changes, Discovery
from mesh.lease import Registration
from mesh.mesh_client import MeshClient
from mesh.registry import Instance
from mesh.shared_lease import SharedLease

PROBE_PREFIX = "probe-"


def say(**fields: Any) -> None:
    """One JSON line on stdout (what the bench reads)."""
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def stand_in_address(process: int, k: int) -> str:
    """A loopback address nothing listens on (connections are refused at once): 127.(100+p).x.y:9."""
    return f"127.{100 + process}.{k // 250}.{k % 250 + 1}:9"


async def commands(handle: Callable[[str, list[str]], Awaitable[bool]]) -> None:
    """Read stdin line by line and hand each command to `handle` until it returns False or EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.decode().split()
        if words and not await handle(words[0], words[1:]):
            return


# -- registrar -------------------------------------------------------------------------------


async def registrar(ns: argparse.Namespace) -> None:
    instances = [
        Instance(
            service=ns.service,
            id=f"s{ns.index}-{k}",
            address=stand_in_address(ns.index, k),
            version="bench",
            started_at=time.time(),
        )
        for k in range(ns.count)
    ]
    began = time.monotonic()
    shared: SharedLease | None = None
    registrations: list[Registration] = []
    if ns.lease_mode == "shared":
        shared = SharedLease(ns.etcd, ttl=ns.ttl)
        await shared.start()
        for inst in instances:
            await shared.add(inst)
        ok = await shared.wait_registered(120.0)
        registered = ns.count if ok else 0
    else:
        registrations = [Registration(ns.etcd, inst, ttl=ns.ttl) for inst in instances]
        for reg in registrations:
            await reg.start()
        done = await asyncio.gather(*(reg.wait_registered(120.0) for reg in registrations))
        registered = sum(done)
    say(ready=True, registered=registered, seconds=time.monotonic() - began, rss=rss_bytes())

    async def handle(command: str, args: list[str]) -> bool:
        if command == "stop":
            if shared is not None:
                await shared.close()
            await asyncio.gather(*(reg.close() for reg in registrations))
            say(stopped=True)
            return False
        say(error=f"unknown command {command}")
        return True

    await commands(handle)


# -- watchers --------------------------------------------------------------------------------


class Watchers:
    """M MeshClients over one service; when each probe add/remove has reached all M, one line."""

    def __init__(self, etcd: str, service: str, count: int) -> None:
        self.discoveries = [Discovery(etcd, service) for _ in range(count)]
        self.clients = [MeshClient(service, discovery=d) for d in self.discoveries]
        self.seen: dict[tuple[str, str], list[float]] = {}
        for d in self.discoveries:
            d.subscribe(self._on_change)

    def _on_change(self, changes: Changes, endpoints: Mapping[str, Instance]) -> None:
        now = time.monotonic()
        for kind, items in (("add", changes.added), ("remove", changes.removed)):
            for name in items:
                if not name.startswith(PROBE_PREFIX):
                    continue
                times = self.seen.setdefault((name, kind), [])
                times.append(now)
                if len(times) == len(self.clients):
                    say(seen=name, kind=kind, first=min(times), last=max(times), n=len(times))

    async def start(self) -> None:
        # Synced discoveries first: a MeshClient's own start also waits for a first endpoint,
        # and the watchers start before anything is registered.
        await asyncio.gather(*(d.start(timeout=30.0) for d in self.discoveries))
        await asyncio.gather(*(c.start(timeout=0.0) for c in self.clients))

    async def wait_count(self, count: int, timeout: float) -> bool:
        async def one(d: Discovery) -> None:
            await d.wait_for(lambda eps: len(eps) >= count, timeout)

        try:
            await asyncio.gather(*(one(d) for d in self.discoveries))
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))


async def watchers(ns: argparse.Namespace) -> None:
    base = rss_bytes()
    group = Watchers(ns.etcd, ns.service, ns.count)
    await group.start()
    say(ready=True, rss_base=base, rss=rss_bytes(), synced=sum(d.synced for d in group.discoveries))

    async def handle(command: str, args: list[str]) -> bool:
        if command == "wait-count":
            ok = await group.wait_count(int(args[0]), float(args[1]))
            say(count=int(args[0]), ok=ok, t=time.monotonic())
        elif command == "rss":
            say(rss_base=base, rss=rss_bytes())
        elif command == "stop":
            await group.close()
            say(stopped=True)
            return False
        else:
            say(error=f"unknown command {command}")
        return True

    await commands(handle)


# -- control plane ---------------------------------------------------------------------------


class TimedControlPlane(ControlPlane):
    """The control plane, with the CPU time each snapshot build takes (build and publish) counted."""

    def __init__(self, etcd: str) -> None:
        super().__init__(etcd)
        self.builds = 0
        self.build_seconds = 0.0
        self.build_max_s = 0.0

    def _publish(self, key: str, state: MeshState) -> None:
        began = time.thread_time()
        try:
            super()._publish(key, state)
        finally:
            took = time.thread_time() - began
            self.builds += 1
            self.build_seconds += took
            self.build_max_s = max(self.build_max_s, took)

    def build_stats(self) -> dict[str, Any]:
        return {"builds": self.builds, "build_seconds": self.build_seconds, "build_max_s": self.build_max_s}


async def control_plane(ns: argparse.Namespace) -> None:
    plane = TimedControlPlane(ns.etcd)
    service = XdsService(plane, "127.0.0.1", 0)
    await service.start()
    say(ready=True, xds=service.address, pid=os.getpid())

    async def handle(command: str, args: list[str]) -> bool:
        if command == "stats":
            say(**plane.build_stats(), endpoints=len(plane.discovery.endpoints()), rss=rss_bytes())
            return True
        if command == "stop":
            await service.stop(0.5)
            say(stopped=True)
            return False
        say(error=f"unknown command {command}")
        return True

    await commands(handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.control_plane_parts")
    parser.add_argument("role", choices=("registrar", "watchers", "control-plane"))
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--service", default="bench")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--ttl", type=int, default=5)
    parser.add_argument("--lease-mode", choices=("per-key", "shared"), default="shared")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    role = {"registrar": registrar, "watchers": watchers, "control-plane": control_plane}[ns.role]
    with contextlib.suppress(KeyboardInterrupt):
        run_stoppable(role(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
