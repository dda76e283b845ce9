"""Request-body guard: a byte limit on every request (413), enforced while the body streams in."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Multipart framing around the file (boundaries, part headers, the filename) on top of its bytes.
MULTIPART_OVERHEAD = 64 * 1024
# Every other route takes a small JSON body (a user name and a password at most): anonymous clients
# must not be able to make the BFF hold megabytes (two 200 MB register posts took it to 1.1 GiB).
JSON_BODY_LIMIT = 16 * 1024


def _too_large(limit: int, upload: bool) -> bytes:
    if upload:
        message = (
            f"the upload is larger than {limit / 2**20:.1f} MiB: send a smaller image (or scale it down)"
        )
    else:
        message = f"the request body is larger than {limit // 1024} KiB: this route takes a small JSON object"
    return json.dumps({"error": "too_large", "message": message, "limit_bytes": limit}).encode()


class _BodyTooLarge(BaseException):
    """Raised by the counting receive. A BaseException so that FastAPI's body parsing (which turns
    any Exception into a 400) and Starlette's error middleware let it through to BodyLimit."""


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes on upload `paths`, and over
    `other_limit` bytes on every other path, with 413.

    Written here because Starlette has no request-body limit (its multipart parser caps form
    fields, not files). A declared Content-Length over the limit is refused before reading; a
    chunked body is counted as it arrives and cut off at the limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        paths: Iterable[str],
        file_limit: int | None = None,
        other_limit: int = JSON_BODY_LIMIT,
    ) -> None:
        self.app = app
        self.limit = limit
        self.paths = frozenset(paths)
        self.file_limit = limit if file_limit is None else file_limit
        self.other_limit = other_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in self.paths
        limit = self.limit if upload else self.other_limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, upload)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
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
                await self._refuse(send, upload)

    async def _refuse(self, send: Send, upload: bool) -> None:
        body = _too_large(self.file_limit if upload else self.other_limit, upload)
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
