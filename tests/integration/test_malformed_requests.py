"""Bytes that are not the method's request message get INVALID_ARGUMENT, never UNKNOWN or a traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from mesh import errors, lifecycle

NOT_A_MESSAGE = b"\xff\xff\xff\xff"  # field 31, wire type 7: no protobuf message parses this


async def _count(requests: AsyncIterator[health_pb2.HealthCheckRequest], context: Any) -> bytes:
    return str(len([r async for r in requests])).encode()


def _counting_handler() -> grpc.GenericRpcHandler:
    handler = grpc.stream_unary_rpc_method_handler(
        _count, request_deserializer=health_pb2.HealthCheckRequest.FromString
    )
    return grpc.method_handlers_generic_handler("test.Counter", {"Count": handler})


def _reason(exc: grpc.aio.AioRpcError) -> str:
    return errors.error_reason(errors.from_call_error(exc))


async def test_malformed_messages_are_invalid_argument_on_every_kind_of_method(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = lifecycle.new_server()
    lifecycle.Health(server, ["test"])
    server.add_generic_rpc_handlers([_counting_handler()])
    address = lifecycle.bind(server, "127.0.0.1", 0)
    await server.start()
    caplog.set_level(logging.ERROR)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await check(NOT_A_MESSAGE, timeout=5)
            watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
            with pytest.raises(grpc.aio.AioRpcError) as server_stream:
                async for _ in watch(NOT_A_MESSAGE, timeout=5):
                    pass
            count = channel.stream_unary("/test.Counter/Count")
            good = health_pb2.HealthCheckRequest(service="x").SerializeToString()
            assert await count(iter([good, good]), timeout=5) == b"2"
            with pytest.raises(grpc.aio.AioRpcError) as client_stream:
                await count(iter([good, NOT_A_MESSAGE]), timeout=5)
            # The server is fine afterwards.
            assert await check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=5)
    finally:
        await server.stop(0)
    for caught in (unary, server_stream, client_stream):
        exc = caught.value
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        assert _reason(exc) == "MALFORMED_MESSAGE"
        assert "DecodeError" not in (exc.details() or "")  # nothing internal in the answer
    assert not [r for r in caplog.records if "deserializ" in r.getMessage().lower()], caplog.text
