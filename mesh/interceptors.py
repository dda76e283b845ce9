"""Server interceptors: request id into a contextvar, one JSON access-log line per call, and a
count of finished calls per method and status code for the metrics."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mesh.handler_wrapping import wrap_handler
from mesh.logs import request_id

access_log = logging.getLogger("ocrmesh.access")

REQUEST_ID_KEY = "x-request-id"
QUIET_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def _incoming_request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:128]
    return uuid.uuid4().hex[:16]


def _code_name(context: Any, error: BaseException | None) -> str:
    code = context.code()
    if code is None:
        if error is None:
            return "OK"
        if isinstance(error, grpc.aio.AbortError):
            return "UNKNOWN"
        return "CANCELLED" if type(error).__name__ == "CancelledError" else "UNKNOWN"
    return str(code.name) if hasattr(code, "name") else str(code)


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets the request id for the call's logs and logs method, status and duration at the end."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        rid = _incoming_request_id(handler_call_details)
        quiet = method in QUIET_METHODS

        @contextlib.asynccontextmanager
        async def logged(context: Any, unary: bool) -> AsyncIterator[None]:
            token = request_id.set(rid)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                yield
                if unary:
                    # Sent after the handler, just before its response: headers sent earlier tell a
                    # proxy (Envoy) the response has started, so it can no longer retry the call on
                    # another instance when this one dies mid-call.
                    await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
            except BaseException as exc:
                error = exc
                raise
            finally:
                if not quiet:
                    access_log.info(
                        "rpc",
                        extra={
                            "method": method,
                            "code": _code_name(context, error),
                            "ms": round((time.perf_counter() - started) * 1000, 2),
                            "peer": context.peer(),
                        },
                    )
                request_id.reset(token)

        return wrap_handler(handler, logged)


RequestCounter = Callable[[str, str], None]
"""`count(method, code)`: called once per finished call, with the method's short name and the code."""


class RequestCountInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every finished call of `service` (e.g. "ocrmesh.ocr.v1.OcrService") by method and code.

    Put it first among a server's own interceptors, so calls refused by a later one (a missing
    token: UNAUTHENTICATED) are counted too. Health and reflection calls are not counted.
    """

    def __init__(self, service: str, count: RequestCounter) -> None:
        self._prefix = f"/{service}/"
        self._count = count

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        name = method[len(self._prefix) :]
        count = self._count

        @contextlib.asynccontextmanager
        async def counted(context: Any, unary: bool) -> AsyncIterator[None]:
            error: BaseException | None = None
            try:
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                count(name, _code_name(context, error))

        return wrap_handler(handler, counted)
