"""aetcd clients with bounded calls and fast reconnects, shared by registration and discovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import aetcd
import grpc

from mesh import mesh_transport
from mesh.etcd_tls import TlsClient
from mesh.workload_identity import WorkloadIdentity

log = logging.getLogger(__name__)

T = TypeVar("T")

ETCD_ERRORS: tuple[type[BaseException], ...] = (
    aetcd.ClientError,
    grpc.RpcError,
    TimeoutError,
    OSError,
)
"""What an etcd call can raise when etcd is down, frozen, restarted or compacted."""

# grpc's default reconnect backoff grows to 120 s, so a channel that saw a long outage would
# keep failing fast long after etcd is back. Keep reconnect attempts within about a second.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.enable_retries": 0,
}


def parse_endpoints(endpoints: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    """("host", port) pairs from "h1:2379,h2:2379", ["h1:2379"] or "http://h1:2379".

    The scheme is dropped: whether a client speaks TLS follows its identity (ClientFactory)."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[tuple[str, int]] = []
    for item in items:
        text = item.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if not text:
            continue
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bad etcd endpoint {item!r}: expected host:port")
        parsed.append((host.strip("[]"), int(port)))
    if not parsed:
        raise ValueError("no etcd endpoints given")
    return tuple(parsed)


class ClientFactory:
    """Makes a fresh aetcd.Client per connection attempt, rotating over the endpoints.

    A failed aetcd watch iterator never resumes by itself; callers re-create the watch on a
    fresh client, which also moves on to the next endpoint of a cluster.

    With a mesh identity (`identity`, else the process's, mesh_transport) the client speaks mTLS
    and etcd knows it by its certificate (etcd/auth_setup.py: what each service may touch); each
    new client reads the certificate afresh, so reconnects after a rotation present the new one.
    Without one it speaks plaintext, which an etcd run with an identity refuses.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        call_timeout: float = 1.0,
        identity: WorkloadIdentity | None = None,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.call_timeout = call_timeout
        self.identity = identity
        self._next = 0

    def new(self) -> aetcd.Client:
        host, port = self.endpoints[self._next % len(self.endpoints)]
        self._next += 1
        identity = self.identity or mesh_transport.identity()
        if identity is not None:
            return TlsClient(
                identity, host=host, port=port, timeout=self.call_timeout, options=dict(_CHANNEL_OPTIONS)
            )
        return aetcd.Client(
            host=host,
            port=port,
            timeout=self.call_timeout,
            options=dict(_CHANNEL_OPTIONS),
        )


def describe_failure(exc: BaseException, endpoints: str | Sequence[str]) -> str:
    """What a person should read when an etcd call failed: refused by etcd's access policy,
    no TLS where etcd requires it, or etcd not reachable."""
    where = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
    identity = mesh_transport.identity()
    if "permission denied" in str(exc):
        who = (
            f"the {identity.current.spiffe_id.service!r} identity" if identity is not None else "this client"
        )
        return (
            f"etcd at {where} refused {who} that (README: etcd access; live settings need the admin "
            "identity, --identity-dir)"
        )
    if identity is None:
        return (
            f"cannot reach etcd at {where} ({exc!r}); is it running? An etcd run with a mesh identity "
            "also needs one here (--identity-dir or OCRMESH_IDENTITY_DIR)"
        )
    return f"cannot reach etcd at {where} over mTLS ({exc!r}); is it running, and from the same mesh CA?"


async def bounded(call: Awaitable[T], timeout: float) -> T:
    """Await an etcd call for at most `timeout` seconds (TimeoutError after)."""
    return await asyncio.wait_for(call, timeout)


async def close_quietly(client: aetcd.Client | None, timeout: float) -> None:
    """Close a client within `timeout`; a failure to close only gets a debug line."""
    if client is None:
        return
    try:
        await asyncio.wait_for(client.close(), timeout)
    except ETCD_ERRORS as exc:
        log.debug("closing etcd client failed", extra={"error": repr(exc)})
