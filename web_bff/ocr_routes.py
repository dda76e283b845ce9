"""The OCR route: a multipart upload checked, recognised through the mesh, answered as the page draws it."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from ocrmesh.ocr.v1 import ocr_pb2
from starlette.datastructures import UploadFile

from web_bff.api_schema import OcrReply, errors, ok
from web_bff.bff_state import State
from web_bff.http_errors import ApiError
from web_bff.logged_in import Access, with_login

OCR_PATH = "/api/ocr"
router = APIRouter()


def line_json(line: ocr_pb2.TextLine) -> dict[str, Any]:
    return {
        "text": line.text,
        "score": round(line.score, 4),
        "box": [[round(p.x, 1), round(p.y, 1)] for p in line.box],
        "page": line.page,
    }


def page_json(page: ocr_pb2.Page) -> dict[str, Any]:
    return {
        "number": page.number,
        "width": page.width,
        "height": page.height,
        "first_line": page.first_line,
        "line_count": page.line_count,
        "text_layer": page.source == ocr_pb2.PAGE_SOURCE_TEXT_LAYER,
    }


def result_json(result: ocr_pb2.OcrResult) -> dict[str, Any]:
    """An OcrResult as the page uses it: lines with 4-point boxes, a PDF's pages, timing and who
    served it."""
    t, s = result.timing, result.served_by
    return {
        "text": result.text,
        "lines": [line_json(line) for line in result.lines],
        "pages": [page_json(page) for page in result.pages],
        "width": result.width,
        "height": result.height,
        "timing": {
            name: round(getattr(t, name), 1)
            for name in ("queue_ms", "decode_ms", "det_ms", "cls_ms", "rec_ms", "total_ms")
        },
        "served_by": {
            "instance_id": s.instance_id,
            "device": s.device,
            "execution_provider": s.execution_provider,
            "models": list(s.models),
            "worker_pid": s.worker_pid,
            "version": s.version,
        },
    }


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The uploaded image's bytes and file name; ApiError (415, 400, 413) when it is not one."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(
            415, "unsupported_type", "send the image as multipart/form-data in a field named 'file'"
        )
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "no_file", "no file in the upload: send the image in a field named 'file'")
    data = await upload.read()
    await form.close()
    if len(data) > max_bytes:
        raise ApiError(
            413,
            "too_large",
            f"the image is larger than {max_bytes / 1048576:.1f} MiB: send a smaller one",
            extra={"limit_bytes": max_bytes},
        )
    return data, (upload.filename or "")[:255]


@router.post(
    OCR_PATH,
    summary="recognise the text in an uploaded image (multipart field `file`)",
    response_model=None,
    responses={**ok(OcrReply), **errors(400, 401, 403, 413, 415, 429, 502, 503, 504)},
)
async def ocr(
    request: Request,
    response: Response,
    access: Access,
    state: State,
) -> dict[str, Any]:
    # The image itself is checked once, by the OCR instance (its header, against its own limits):
    # an unsupported type comes back as INVALID_ARGUMENT, answered 415 (http_errors.from_rpc).
    data, filename = await read_upload(request, state.upload_limits()[0])
    started = time.perf_counter()

    async def call(token: str) -> ocr_pb2.OcrResult:
        return await state.backends.recognize(data, filename, token)

    result = await with_login(request, response, state, access, call, "ocr")
    return {
        **result_json(result),
        "bff_ms": round((time.perf_counter() - started) * 1000, 1),
        "filename": filename,
        "bytes": len(data),
    }
