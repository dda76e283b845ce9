"""Client-streaming calls whose failure is the server's status, not grpcio's INTERNAL write artefact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

RACE_WAIT_S = 2.0
"""How long to wait for the server's status after grpcio reported the write artefact before it
arrived (it follows within milliseconds; it may never come when Core refused the write itself)."""

# Why (grpc/grpc#36066; fix proposed upstream in grpc/grpc#43486): a server may end an upload before
# it is all sent (UNAUTHENTICATED, UPLOADS_PER_CALLER, IMAGE_TOO_MANY_BYTES from the header...). A
# chunk write then in flight fails in Core, and grpcio's asyncio client sets the call's status to
# INTERNAL "Failed execute_batch" whatever the server sent. When the server's status came first
# (nearly always on loopback, for RecognizeStream and RecognizePages alike) it is overwritten for
# good: awaiting the call, and every accessor, says INTERNAL. When the failed write came first, the
# call may raise INTERNAL before the server's status replaces it a moment later.
# Stopping the writes once the call is done does not help (grpcio's request consumer already does):
# the write that loses is the one in flight. Waiting for the server's initial metadata before the
# chunks would cost a round trip per upload and, sent early, keep Envoy from retrying a call on
# another instance (mesh/interceptors.py). So: hear each status grpcio sets on the call (its done
# callbacks run on every set) and, when it raises the artefact, report the server's status instead:
# heard before, or within RACE_WAIT_S after.


def is_write_race(err: grpc.aio.AioRpcError) -> bool:
    """Whether `err` is grpcio's own INTERNAL for a write refused by a call that had ended."""
    return err.code() is grpc.StatusCode.INTERNAL and "execute_batch" in (err.debug_error_string() or "")


def _settled(awaitable: Awaitable[T]) -> T:
    """The value of a call accessor that does not wait (the call is done, so none does): grpc.aio
    gives the status only as coroutines, and a done callback cannot await."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    steps.close()
    raise RuntimeError("the call has no status yet")


class KeptStatusCall:
    """A started client-streaming call (stream-unary or stream-stream): awaiting it (or
    `each_reply`) gives its reply (replies), or raises the server's error even where grpcio
    reported the write artefact instead."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._heard: list[grpc.aio.AioRpcError] = []
        self._new = asyncio.Event()
        call.add_done_callback(self._hear)

    def _hear(self, call: Any) -> None:
        """A done callback: runs each time grpcio sets a status on the call, which it then holds."""
        try:
            code = _settled(call.code())
            if code is grpc.StatusCode.OK:
                return
            self._heard.append(
                grpc.aio.AioRpcError(
                    code,
                    _settled(call.initial_metadata()),
                    _settled(call.trailing_metadata()),
                    _settled(call.details()),
                    _settled(call.debug_error_string()),
                )
            )
            self._new.set()
        except Exception:  # a done callback must not raise into grpcio
            log.debug("could not read a streaming call's status", exc_info=True)

    def _server_error(self) -> grpc.aio.AioRpcError | None:
        return next((err for err in self._heard if not is_write_race(err)), None)

    async def server_error(self, raised: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """The error to report for `raised`: itself, unless it is the write artefact and the
        server's own status was heard before it or within RACE_WAIT_S (and the call's deadline)."""
        if not is_write_race(raised):
            return raised
        remaining = self.call.time_remaining()
        wait_s = min(RACE_WAIT_S, math.inf if remaining is None else remaining)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        while (found := self._server_error()) is None:
            left = until - loop.time()
            if left <= 0:
                return raised
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)
        return found

    async def _reply(self) -> Any:
        try:
            return await self.call
        except grpc.aio.AioRpcError as err:
            kept = await self.server_error(err)
            if kept is err:
                raise
            raise kept from err

    def __await__(self) -> Any:
        return self._reply().__await__()

    async def each_reply(self, on_reply: Callable[[Any], Awaitable[None]]) -> None:
        """Hand every reply of a stream-stream call to `on_reply`; then raise as awaiting does."""
        replies = self.call.__aiter__()
        while True:
            try:
                reply = await anext(replies)
            except StopAsyncIteration:
                return
            except grpc.aio.AioRpcError as err:
                kept = await self.server_error(err)
                if kept is err:
                    raise
                raise kept from err
            await on_reply(reply)

    def trailing_metadata(self) -> Awaitable[Any]:
        return self.call.trailing_metadata()  # type: ignore[no-any-return]
