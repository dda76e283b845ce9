"""The page-by-page OCR route: an upload answered as a stream of JSON lines while its pages are read."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from ocrmesh.ocr.v1 import ocr_pb2

from mesh.tasks import cancel_and_wait
from web_bff.api_schema import PagesEvent, errors
from web_bff.bff_state import State
from web_bff.http_errors import ApiError, from_rpc
from web_bff.logged_in import Access, with_login
from web_bff.ocr_routes import line_json, page_json, read_upload, result_json

PAGES_PATH = "/api/ocr/pages"
NDJSON = "application/x-ndjson"
router = APIRouter()


def event_json(reply: ocr_pb2.RecognizePagesResponse) -> dict[str, Any]:
    """One RecognizePages reply as the page reads it (the result gets the BFF's fields later)."""
    kind = reply.WhichOneof("event")
    if kind == "accepted":
        return {"event": "accepted", "pages": reply.accepted.page_count}
    if kind == "page":
        return {
            "event": "page",
            "page": page_json(reply.page.page),
            "lines": [line_json(line) for line in reply.page.lines],
        }
    return {"event": "result", **result_json(reply.result)}


class PagesCall:
    """One RecognizePages call running in a task; its events wait in a queue for the HTTP answer."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # None: the call ended
        self.heard = asyncio.Event()
        self.task: asyncio.Task[ocr_pb2.OcrResult] | None = None

    async def on_event(self, reply: ocr_pb2.RecognizePagesResponse) -> None:
        await self.events.put(event_json(reply))
        self.heard.set()

    async def first_event(self) -> None:
        """Wait until the call was admitted (its first event) or failed; raises its error."""
        assert self.task is not None
        heard = asyncio.create_task(self.heard.wait())
        try:
            await asyncio.wait({heard, self.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(heard)
        if not self.heard.is_set():
            self.task.result()  # raises the call's error (it ended without any event)


@router.post(
    PAGES_PATH,
    summary="recognise an uploaded PDF (or image) page by page, answered as JSON lines as pages are read",
    response_model=None,
    responses={
        200: {
            "description": "one JSON object per line: `accepted` (the page count), then each `page` in "
            "order as it is read, then the `result` (as POST /api/ocr answers it); an `error` line if "
            "the OCR fails after it started. A second `accepted` means the call was retried "
            "elsewhere and the pages start over.",
            "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/PagesEvent"}}},
        },
        **errors(400, 401, 403, 413, 415, 429, 502, 503, 504),
    },
)
async def ocr_pages(request: Request, response: Response, access: Access, state: State) -> Response:
    data, filename = await read_upload(request, state.upload_limits()[0])
    started = time.perf_counter()

    async def call(token: str) -> PagesCall:
        run = PagesCall()
        run.task = asyncio.create_task(state.backends.recognize_pages(data, filename, token, run.on_event))
        try:
            await run.first_event()
        except BaseException:
            await cancel_and_wait(run.task)
            raise
        return run

    # Refusals before the first page (bad PDF, busy, login) are plain HTTP errors, as on /api/ocr.
    run: PagesCall = await with_login(request, response, state, access, call, "ocr")
    assert run.task is not None
    task = run.task

    task.add_done_callback(lambda _: run.events.put_nowait(None))

    async def lines() -> AsyncIterator[bytes]:
        try:
            while (event := await run.events.get()) is not None:
                if event["event"] == "result":
                    event |= {
                        "bff_ms": round((time.perf_counter() - started) * 1000, 1),
                        "filename": filename,
                        "bytes": len(data),
                    }
                yield (json.dumps(event, ensure_ascii=False) + "\n").encode()
            try:
                task.result()
            except grpc.aio.AioRpcError as exc:
                yield (json.dumps(_error_event(from_rpc(exc, "ocr")), ensure_ascii=False) + "\n").encode()
        finally:
            await cancel_and_wait(task)  # the browser left: the OCR instance drops the pages left

    answer = StreamingResponse(lines(), media_type=NDJSON, headers={"cache-control": "no-store"})
    for value in response.headers.getlist("set-cookie"):  # a refreshed session's cookies
        answer.headers.append("set-cookie", value)
    return answer


def _error_event(err: ApiError) -> dict[str, Any]:
    body = PagesEvent(event="error", status=err.status, error=err.code, message=err.message)
    return body.model_dump(exclude_none=True)
