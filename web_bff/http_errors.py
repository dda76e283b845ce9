"""API errors: one JSON shape, and gRPC statuses from the mesh mapped to HTTP statuses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from starlette.responses import JSONResponse

from mesh import errors
from mesh.picking import CALLER_LIMIT_REASONS


@dataclass
class ApiError(Exception):
    """An HTTP error answer: `code` is stable (the page translates it), `message` is for people."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    end_session: bool = False  # the login is gone: the answer also clears the session cookies

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.code, "message": self.message, **self.extra}
        if self.fields:
            body["fields"] = self.fields
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def retry_after(seconds: float | None, default: float = 1.0) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(default if seconds is None else seconds)))


# (HTTP status, stable code) per gRPC status; what a browser client can act on.
_MAPPING: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "login_required"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "taken"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "busy"),
    grpc.StatusCode.CANCELLED: (503, "unavailable"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


# OCR's INVALID_ARGUMENT reasons (ErrorInfo) for an upload that is no image of an accepted type.
NOT_AN_ACCEPTED_IMAGE = frozenset({"IMAGE_EMPTY", "IMAGE_NOT_AN_IMAGE", "IMAGE_UNSUPPORTED_FORMAT"})


def from_rpc(exc: grpc.aio.AioRpcError, service: str) -> ApiError:
    """The HTTP answer for a failed call to `service` ("auth" or "ocr").

    400 with per-field messages for bad input (a bad image: `bad_image`; 415 `unsupported_type`
    when it is no image of a type OCR takes), 401 for a missing or
    expired login, 409 for a taken user name, 429 with Retry-After when the service sheds load,
    503 (Retry-After) when no instance can take the call, 504 when it took too long, 502 otherwise.
    """
    status = errors.from_call_error(exc)
    code = exc.code()
    message = status.message or exc.details() or code.name
    http, name = _MAPPING.get(code, (502, "upstream_error"))
    headers: dict[str, str] = {}
    fields = {v.field: v.description for v in errors.field_violations(status)}
    reason = errors.error_reason(status)
    if http == 400 and service == "ocr" and reason in NOT_AN_ACCEPTED_IMAGE:
        http, name = 415, "unsupported_type"
    elif http == 400 and service == "ocr":
        name = "bad_image"
    elif http == 429 and reason in CALLER_LIMIT_REASONS:
        # The caller's own throttle (too many failed logins, registrations): not a busy service.
        headers["Retry-After"] = retry_after(errors.retry_delay_s(status))
        name = "throttled"
    elif http == 429:
        headers["Retry-After"] = retry_after(errors.retry_delay_s(status))
        message = f"the {service} service is busy: {message}"
    elif http == 503:
        headers["Retry-After"] = retry_after(errors.retry_delay_s(status))
        message = f"the {service} service is unavailable right now: {message}"
    elif http == 504:
        message = f"the {service} service did not answer in time: {message}"
    elif http == 502:
        message = f"the {service} service failed ({code.name}): {message}"
    extra = {"reason": reason} if reason else {}
    return ApiError(http, name, message, headers, fields, extra)
