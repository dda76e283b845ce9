"""One wrapper for grpc.aio method handlers of every kind: each call runs inside a given scope, and
a request that is not a valid message is answered INVALID_ARGUMENT."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mesh import errors

CallScope = Callable[[Any, bool], AbstractAsyncContextManager[object]]
"""`scope(context, unary)`: entered around one call; `unary` is True when it has one response."""


class Undecodable:
    """What a request that fails to parse becomes, so the handler wrapper can answer it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning Undecodable instead of raising. grpc itself would answer UNKNOWN
    ("Unexpected <class DecodeError>") and log a traceback at error level for every bad message."""
    if deserializer is None or getattr(deserializer, "tolerant", False):
        return deserializer

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as exc:
            return Undecodable(exc)

    parse.tolerant = True  # type: ignore[attr-defined]
    return parse


async def _refuse(context: Any) -> None:
    """Answer INVALID_ARGUMENT: the bytes are not the method's request message (nothing internal said)."""
    message = "the request is not a valid protobuf message for this method"
    violation = errors.FieldViolation("request", message, "MALFORMED_MESSAGE")
    await errors.abort(context, errors.bad_request(message, [violation], reason="MALFORMED_MESSAGE"))


async def _checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _refuse(context)
        yield request


def wrap_handler(handler: grpc.RpcMethodHandler, scope: CallScope) -> grpc.RpcMethodHandler:
    """The same handler (kind and serialisers kept), each call run inside `scope(context, unary)`.

    grpc.aio has no per-call hook that spans a streaming response, so interceptors re-wrap the
    handler; this is the one place that knows the four kinds and both streaming styles (async
    generators, and coroutines that send with `await context.write(...)`). A request message that
    does not parse is answered INVALID_ARGUMENT before the handler sees it.
    """
    deserializer = _tolerant(handler.request_deserializer)
    streamed = bool(handler.stream_unary or handler.stream_stream)

    async def checked(request: Any, context: Any) -> Any:
        if streamed:
            return _checked(request, context)
        if isinstance(request, Undecodable):
            await _refuse(context)
        return request

    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: Any) -> Any:
            async with scope(context, True):
                return await inner(await checked(request, context), context)

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return make(unary, request_deserializer=deserializer, response_serializer=handler.response_serializer)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        async with scope(context, False):
            async for item in inner_stream(await checked(request, context), context):
                yield item

    async def writing(request: Any, context: Any) -> None:
        # Handlers such as grpc.health.v1 Watch are coroutines that call context.write.
        async with scope(context, False):
            await inner_stream(await checked(request, context), context)

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(
        writing if inspect.iscoroutinefunction(inner_stream) else streaming,
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


def refusing_unread(handler: grpc.RpcMethodHandler, refusal: errors.RichError) -> grpc.RpcMethodHandler:
    """A handler that answers `refusal` without reading the request.

    A unary method's request is read whole before its handler runs, so a refusal decided from the
    metadata alone (no token) would still let any caller make the server buffer a message up to
    the size limit first. Served as a stream that is never read, the refusal goes out at once and
    the unread body is dropped with the stream (at most a flow-control window of it arrives).
    """

    async def refuse(requests: Any, context: Any) -> None:
        await errors.abort(context, refusal)

    async def refuse_streaming(requests: Any, context: Any) -> AsyncIterator[Any]:
        await errors.abort(context, refusal)
        yield  # pragma: no cover - abort raises

    if handler.unary_unary or handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        refuse_streaming, response_serializer=handler.response_serializer
    )
