"""Upload guard: a request-body byte limit (413) enforced while the body streams in."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Multipart framing around the file (boundaries, part headers, the filename) on top of its bytes.
MULTIPART_OVERHEAD = 64 * 1024


def _too_large(limit: int) -> bytes:
    mib = limit / (1024 * 1024)
    return json.dumps(
        {
            "error": "too_large",
            "message": f"the upload is larger than {mib:.1f} MiB: send a smaller image (or scale it down)",
            "limit_bytes": limit,
        }
    ).encode()


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes on `paths` with 413.

    Written here because Starlette has no request-body limit (its multipart parser caps form
    fields, not files). A declared Content-Length over the limit is refused before reading; a
    chunked body is counted as it arrives and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, limit: int, paths: Iterable[str], file_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.paths = frozenset(paths)
        self.file_limit = limit if file_limit is None else file_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = _too_large(self.file_limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
