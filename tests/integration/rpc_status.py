"""What a refused gRPC call said (its rich status and code), and bearer metadata for calls with a token."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
from google.rpc import status_pb2

from mesh import errors


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def refused(call: Awaitable[Any]) -> status_pb2.Status:
    """The rich status of a call that must fail."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return errors.from_call_error(exc)
    raise AssertionError("the call succeeded")


def code(status: status_pb2.Status) -> grpc.StatusCode:
    return errors.code_from_int(status.code)
