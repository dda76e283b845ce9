"""One wrapper for grpc.aio method handlers of every kind: each call runs inside a given scope."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

CallScope = Callable[[Any, bool], AbstractAsyncContextManager[object]]
"""`scope(context, unary)`: entered around one call; `unary` is True when it has one response."""


def wrap_handler(handler: grpc.RpcMethodHandler, scope: CallScope) -> grpc.RpcMethodHandler:
    """The same handler (kind and serialisers kept), each call run inside `scope(context, unary)`.

    grpc.aio has no per-call hook that spans a streaming response, so interceptors re-wrap the
    handler; this is the one place that knows the four kinds and both streaming styles (async
    generators, and coroutines that send with `await context.write(...)`).
    """
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: Any) -> Any:
            async with scope(context, True):
                return await inner(request, context)

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return make(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    inner_stream = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        async with scope(context, False):
            async for item in inner_stream(request, context):
                yield item

    async def writing(request: Any, context: Any) -> None:
        # Handlers such as grpc.health.v1 Watch are coroutines that call context.write.
        async with scope(context, False):
            await inner_stream(request, context)

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(
        writing if inspect.iscoroutinefunction(inner_stream) else streaming,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
