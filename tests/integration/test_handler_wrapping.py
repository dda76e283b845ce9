"""wrap_handler on a real loopback server: every handler kind runs inside the scope, errors reach it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from mesh.handler_wrapping import wrap_handler
from tests.integration.etcd_fixtures import eventually

current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="")


async def _unary(request: bytes, context: Any) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    return current.get().encode() + request


async def _client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return current.get().encode() + b"".join([r async for r in requests])


async def _server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield current.get().encode() + request


async def _writes(requests: AsyncIterator[bytes], context: Any) -> None:
    # A write-style handler (a coroutine calling context.write), like grpc.health.v1 Watch.
    async for request in requests:
        await context.write(current.get().encode() + request)


class _Scoped(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets `current` for the call and records (method, unary, error type) when it ends."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, bool, str]] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1]

        @contextlib.asynccontextmanager
        async def scope(context: Any, unary: bool) -> AsyncIterator[None]:
            token = current.set(f"{method}:")
            error = ""
            try:
                yield
            except BaseException as exc:
                error = type(exc).__name__
                raise
            finally:
                current.reset(token)
                self.ended.append((method, unary, error))

        return wrap_handler(handler, scope)


async def _ended(scoped: _Scoped, count: int) -> bool:
    return len(scoped.ended) >= count


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, _Scoped]]:
    scoped = _Scoped()
    server = grpc.aio.server(interceptors=[scoped])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "Writes": grpc.stream_stream_rpc_method_handler(_writes),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Kinds", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, scoped
    finally:
        await server.stop(0)


async def test_every_kind_runs_inside_the_scope(served: tuple[grpc.aio.Channel, _Scoped]) -> None:
    channel, scoped = served
    assert await channel.unary_unary("/test.Kinds/Unary")(b"x", timeout=10) == b"Unary:x"
    assert await channel.stream_unary("/test.Kinds/ClientStream")(iter([b"a", b"b"]), timeout=10) == (
        b"ClientStream:ab"
    )
    streamed = [r async for r in channel.unary_stream("/test.Kinds/ServerStream")(b"y", timeout=10)]
    assert streamed == [b"ServerStream:y", b"ServerStream:y"]
    written = [r async for r in channel.stream_stream("/test.Kinds/Writes")(iter([b"p", b"q"]), timeout=10)]
    assert written == [b"Writes:p", b"Writes:q"]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Kinds/Unary")(b"fail", timeout=10)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # context.abort sends the status before the handler unwinds: wait for the scope to see it.
    await eventually(lambda: _ended(scoped, 5), timeout=10)
    assert sorted(scoped.ended) == sorted(
        [
            ("Unary", True, ""),
            ("ClientStream", True, ""),
            ("ServerStream", False, ""),
            ("Writes", False, ""),
            ("Unary", True, "AbortError"),
        ]
    )
