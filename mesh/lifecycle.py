"""Service lifecycle pieces: the gRPC server, health status, stop signals and the ready file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh import mesh_transport, reflection_v1
from mesh.caller_policy import CallerPolicyInterceptor
from mesh.interceptors import AccessLogInterceptor

log = logging.getLogger(__name__)

MAX_STREAMS_PER_CONNECTION = 512
"""grpc.max_concurrent_streams of every server (new_server)."""


def new_server(
    max_receive_bytes: int = 4 * 1024 * 1024,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    callers: Mapping[str, Collection[str]] | None = None,
    cap_streams: bool = True,
) -> grpc.aio.Server:
    """A grpc.aio server with our interceptors and sane options.

    With a mesh identity in use, `callers` maps gRPC service names to the mesh services allowed
    to call them (see mesh/caller_policy.py; services not listed: any mesh workload).
    `cap_streams` False (the hardening benchmark only) leaves grpc's default streams per connection.
    """
    identity = mesh_transport.identity()
    policy = [] if identity is None else [CallerPolicyInterceptor(identity.trust_domain, callers or {})]
    stream_cap = [("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)] if cap_streams else []
    return grpc.aio.server(
        interceptors=[AccessLogInterceptor(), *policy, *interceptors],
        options=[
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", -1),
            # Never let two instances silently share one port.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # Mesh clients ping every 2 s while calls run, to find frozen peers (mesh/balancer.py);
            # pings closer than this, with no data sent in between, are strikes (GOAWAY after 2).
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            # Streams one connection may hold open at once: each may hold a flow-control window
            # of unread body. Above what a balancing client sends over its one channel.
            *stream_cap,
        ],
    )


def bind(server: grpc.aio.Server, host: str, port: int) -> str:
    """Bind host:port (0 picks a free port), mTLS when this process has a mesh identity, else
    plaintext; returns "host:port" actually bound."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = mesh_transport.bind(server, target)
    if bound == 0:
        raise OSError(f"cannot listen on {target}: the port is in use or the address is not local")
    return f"{host}:{bound}"


class Health:
    """grpc.health.v1 for a set of services, all flipped together (NOT_SERVING until ready)."""

    def __init__(self, server: grpc.aio.Server, services: Sequence[str]) -> None:
        self.servicer = health.aio.HealthServicer()
        self.services = ["", *services]
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        self.serving = False

    async def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.serving = serving
        for name in self.services:
            await self.servicer.set(name, status)


def enable_reflection(server: grpc.aio.Server, services: Sequence[str]) -> None:
    """Server reflection, v1 and v1alpha, listing `services` and health."""
    reflection_v1.enable(server, [*services, health.SERVICE_NAME])


async def wait_for_stop_signal(extra: asyncio.Event | None = None) -> str:
    """Return the name of the first SIGINT/SIGTERM received (or "event" when `extra` is set)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        waiters = [asyncio.create_task(stop.wait())]
        if extra is not None:
            waiters.append(asyncio.create_task(extra.wait()))
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return received[0] if received else "event"


async def drain_on_stop_signal(drain: Callable[[], Awaitable[None]], grace_s: float) -> int:
    """A serve command's last step: wait for SIGINT/SIGTERM, say so, drain; returns exit status 0."""
    signame = await wait_for_stop_signal()
    print(f"{signame}: draining (up to {grace_s:.0f}s for in-flight requests)", flush=True)
    await drain()
    return 0


def write_ready_file(path: Path | None, payload: dict[str, Any]) -> None:
    """Atomically write `payload` as JSON, so a supervisor or test can read the bound ports."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**payload, "pid": os.getpid()}))
    tmp.replace(path)
