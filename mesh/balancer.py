"""Where every client channel comes from: shared options, direct channels, one channel per endpoint."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

import grpc

from mesh import mesh_transport

log = logging.getLogger(__name__)

MAX_RECEIVE_BYTES = 64 * 1024 * 1024
RETIRE_GRACE_S = 5.0
"""How long calls in flight on an endpoint that left discovery may still run before its channel
is closed under them. A draining instance finishes most calls within it; a frozen one (SIGSTOP,
lease expired) would hold them until their deadlines, so MeshClient retries the cut calls
elsewhere (idempotent methods) instead: lease TTL + this grace bounds how long that takes."""

ROTATION_GRACE_S = 120.0
"""How long calls on a channel made with the previous certificate may still run after a rotation:
an established TLS connection stays valid, so only calls longer than any deadline are cut."""

KEEPALIVE_TIME_MS = 2_000
KEEPALIVE_TIMEOUT_MS = 3_000
CONNECT_TIMEOUT_MS = 3_000

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


def channel_options() -> list[tuple[str, int | str]]:
    """Options every ocrmesh client channel uses."""
    return [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        # A frozen peer (SIGSTOP, a hung host, a silent partition) keeps its TCP connection open
        # and never answers: a ping every KEEPALIVE_TIME_MS while calls are in flight, unanswered
        # for KEEPALIVE_TIMEOUT_MS, closes the connection, so its calls fail UNAVAILABLE and
        # MeshClient retries the idempotent ones elsewhere long before their deadlines.
        # Servers allow these pings (mesh/lifecycle.py: min_ping_interval_without_data_ms).
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # grpc 1.85 closes the connection on an unanswered ping after this (default 60 s), not
        # after keepalive_timeout_ms alone (chttp2 writing.cc): set both.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging during one long call
        # Reconnecting to a frozen peer gets a TCP connection from its kernel, then waits for the
        # HTTP/2 SETTINGS that never come; give up after this long, not grpc's default 20 s.
        ("grpc.min_connect_timeout_ms", CONNECT_TIMEOUT_MS),
        ("grpc.enable_retries", 0),
        # grpc's reconnect backoff grows to 120 s by default: an instance restarted on the same
        # address would be refused for minutes. Keep reconnect attempts about a second apart.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def direct_channel(target: str, service: str | None = None) -> grpc.aio.Channel:
    """A channel to one address (host:port) of mesh service `service`, with our options: mTLS
    requiring the peer to prove it is `service` when this process has a mesh identity (then
    `service` must be given), else plaintext."""
    return mesh_transport.channel(target, service, channel_options())


def multicallable(
    channel: grpc.aio.Channel, kind: str, method: str, serializer: Serializer, deserializer: Deserializer
) -> Any:
    """`channel.<kind>(method, ...)` for kind "unary_unary", "stream_unary", ... (callers cache it)."""
    return getattr(channel, kind)(
        method,
        request_serializer=serializer,
        response_deserializer=deserializer,
        _registered_method=True,
    )


class EndpointChannels:
    """One channel per endpoint address: made on first use, reused, and closed when the endpoint
    leaves (`retire`), after its calls in flight finish or `grace_s` passes."""

    def __init__(
        self,
        service: str | None = None,
        grace_s: float = RETIRE_GRACE_S,
        factory: Callable[[str], grpc.aio.Channel] | None = None,
    ) -> None:
        self.service = service
        self.grace_s = grace_s
        self._factory = factory or (lambda address: direct_channel(address, service))
        self._generation = mesh_transport.generation()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str, str, Serializer, Deserializer], Any] = {}
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._closed = False

    def addresses(self) -> list[str]:
        """Addresses with an open channel."""
        return sorted(self._channels)

    @property
    def retiring(self) -> int:
        """Channels of departed endpoints still finishing their calls."""
        return len(self._retiring)

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to `address`, made (and told to connect) on first use."""
        self._renew_after_rotation()
        found = self._channels.get(address)
        if found is not None:
            return found
        if self._closed:
            raise RuntimeError("endpoint channels are closed")
        made = self._factory(address)
        made.get_state(try_to_connect=True)
        self._channels[address] = made
        return made

    def unary_unary(
        self, address: str, method: str, serializer: Serializer = None, deserializer: Deserializer = None
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """A cached unary callable for `method` on `address`'s channel."""
        return self._callable(address, "unary_unary", method, serializer, deserializer)

    def stream_unary(
        self, address: str, method: str, serializer: Serializer = None, deserializer: Deserializer = None
    ) -> grpc.aio.StreamUnaryMultiCallable[Any, Any]:
        """A cached client-streaming callable for `method` on `address`'s channel."""
        return self._callable(address, "stream_unary", method, serializer, deserializer)

    def stream_stream(
        self, address: str, method: str, serializer: Serializer = None, deserializer: Deserializer = None
    ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
        """A cached bidirectional-streaming callable for `method` on `address`'s channel."""
        return self._callable(address, "stream_stream", method, serializer, deserializer)

    def _callable(
        self, address: str, kind: str, method: str, serializer: Serializer, deserializer: Deserializer
    ) -> Any:
        key = (address, kind, method, serializer, deserializer)
        found = self._callables.get(key)
        if found is None:
            found = multicallable(self.channel(address), kind, method, serializer, deserializer)
            self._callables[key] = found
        return found

    def _renew_after_rotation(self) -> None:
        """When this process's certificate rotated, new calls go over new channels made with it; the
        old channels finish their calls (their connections stay valid) within ROTATION_GRACE_S."""
        generation = mesh_transport.generation()
        if generation == self._generation:
            return
        self._generation = generation
        for address in list(self._channels):
            self.retire(address, ROTATION_GRACE_S)

    def retire(self, address: str, grace_s: float | None = None) -> None:
        """The endpoint left: no new calls; close its channel once calls in flight end (or grace)."""
        channel = self._channels.pop(address, None)
        for key in [k for k in self._callables if k[0] == address]:
            del self._callables[key]
        if channel is None:
            return
        task = asyncio.get_running_loop().create_task(
            channel.close(self.grace_s if grace_s is None else grace_s), name=f"close channel {address}"
        )
        self._retiring[task] = channel
        task.add_done_callback(self._retired)

    def keep_only(self, addresses: Collection[str]) -> None:
        """Retire every channel whose address is not in `addresses`."""
        for address in [a for a in self._channels if a not in addresses]:
            self.retire(address)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing a channel failed", exc_info=task.exception())

    async def close(self) -> None:
        """Close every channel now (calls still running are cancelled)."""
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        self._callables.clear()
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        await asyncio.gather(*(ch.close() for ch in [*channels, *retiring.values()]))

    async def __aenter__(self) -> EndpointChannels:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
