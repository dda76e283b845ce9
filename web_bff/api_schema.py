"""The HTTP API's contract: a pydantic model for every body, the error answers each route really
gives, the session cookies and the CSRF header as security schemes (served at /api/openapi.json).

The routes return plain dicts; these models document them (`responses=`), and the schemathesis test
(tests/integration/test_bff_openapi.py) checks real answers of a real BFF against them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from web_bff.session import ACCESS_COOKIE, CSRF_COOKIE, CSRF_HEADER, REFRESH_COOKIE


class ErrorBody(BaseModel):
    """Every error answer. `error` is a stable code (the page translates it), `message` is for people."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(
        description="stable code: invalid, bad_image, no_file, unsupported_type, too_large, csrf, "
        "login_required, bad_credentials, taken, busy, throttled, unavailable, timeout, upstream_error, "
        "not_found, method_not_allowed, http_<status>",
        examples=["bad_image"],
    )
    message: str = Field(description="what went wrong and what to do, in English")
    fields: dict[str, str] | None = Field(
        default=None, description="per request field: what is wrong with it (400, 409)"
    )
    reason: str | None = Field(
        default=None,
        description="the mesh's ErrorInfo reason (README: Error model), e.g. IMAGE_NOT_AN_IMAGE, QUEUE_FULL",
    )
    limit_bytes: int | None = Field(default=None, description="413: the byte limit that was exceeded")


class User(BaseModel):
    id: str = Field(description="stable user id")
    username: str = Field(description="the normalised (lower-case) user name")


class Credentials(BaseModel):
    """A user name and password, as the login and register forms send them."""

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


class CsrfReply(BaseModel):
    csrf: str = Field(description="the token; send it back as the X-CSRF-Token header")
    header: str = Field(description='the header to send it in: "X-CSRF-Token"')


class ConfigReply(BaseModel):
    max_upload_bytes: int = Field(description="the largest upload every OCR instance (and the BFF) takes")
    formats: list[str] = Field(description="image formats every OCR instance takes (Pillow's names)")


class UserReply(BaseModel):
    user: User


class SessionReply(BaseModel):
    user: User
    expires_at: int = Field(description="when the access token expires (epoch seconds); it is refreshed")


class LogoutReply(BaseModel):
    ok: bool
    revoked_sessions: int = Field(description="sessions ended (0 when there was none)")


class Line(BaseModel):
    text: str
    score: float = Field(description="recognition confidence in [0, 1]")
    box: list[list[float]] = Field(description="four [x, y] corners clockwise from top-left, image pixels")
    page: int = Field(0, description="the PDF page the line is on (1-based); 0 for an image")


class Page(BaseModel):
    number: int = Field(description="1-based page number")
    width: int = Field(description="the page as rendered, pixels (its lines' boxes are in these)")
    height: int
    first_line: int = Field(description="its lines are lines[first_line:first_line + line_count]")
    line_count: int
    text_layer: bool = Field(description="read from the PDF's embedded text, not by OCR")


class Timing(BaseModel):
    queue_ms: float
    decode_ms: float
    det_ms: float
    cls_ms: float
    rec_ms: float
    total_ms: float


class ServedBy(BaseModel):
    instance_id: str
    device: str = Field(description='"cpu" or "cuda"')
    execution_provider: str = Field(description="the ONNX Runtime provider really used")
    models: list[str]
    worker_pid: int
    version: str


class OcrReply(BaseModel):
    text: str = Field(description="all lines joined with newlines, in reading order")
    lines: list[Line]
    pages: list[Page] = Field([], description="a PDF's pages in order; empty for an image")
    width: int
    height: int
    timing: Timing
    served_by: ServedBy
    bff_ms: float = Field(description="time in the BFF from the upload read to the answer")
    filename: str
    bytes: int


class PagesEvent(BaseModel):
    """One line of POST /api/ocr/pages. `accepted`: `pages` will come; `page`: one page read (`page`,
    its `lines`), in page order; `result`: every field of POST /api/ocr's answer; `error`: the OCR
    failed after it started (`status`, `error`, `message` as an error answer would say)."""

    model_config = ConfigDict(extra="allow")
    event: str = Field(description='"accepted", "page", "result" or "error"')
    pages: int | None = Field(default=None, description="accepted: the page count (1 for an image)")
    page: Page | None = None
    lines: list[Line] | None = None
    status: int | None = Field(default=None, description="error: the HTTP status it would have been")
    error: str | None = None
    message: str | None = None


class ServiceHealth(BaseModel):
    instances: int
    healthy: int


class StatusReply(BaseModel):
    """Everyone: healthy instances per service. Users in --admins (detail true) also get the
    instances, the etcd endpoint, the xDS clients and the BFF's own balancer state."""

    model_config = ConfigDict(extra="allow")
    at: float = Field(description="when the snapshot was taken (epoch seconds)")
    services: dict[str, ServiceHealth]
    detail: bool
    etcd: str | None = None
    instances: list[dict[str, Any]] | None = None
    xds_clients: list[dict[str, Any]] | None = None
    bff: dict[str, Any] | None = None


class HealthReply(BaseModel):
    status: str = Field(description='"ok" or "degraded"')
    missing: list[str] = Field(description="services with no known endpoint")


_WHY = {
    400: "the request is not valid (`fields` says which field and why), or the image is broken",
    401: "no session, or it has ended: log in (`login_required`) or wrong credentials (`bad_credentials`)",
    403: "the CSRF check failed: send X-CSRF-Token equal to the ocrmesh_csrf cookie, from this origin",
    409: "the user name is taken",
    413: "the body is over the limit (16 KiB of JSON; the upload limit on /api/ocr)",
    415: "not multipart/form-data, or no image of an accepted type",
    429: "the service is busy (`busy`), or this client made too many failed logins or registrations "
    "(`throttled`): retry after Retry-After seconds",
    502: "a service failed unexpectedly",
    503: "no instance can take the call now: retry after Retry-After seconds",
    504: "the service did not answer in time",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, each with the ErrorBody schema."""
    return {
        status: {
            "model": ErrorBody,
            "description": _WHY[status],
            **({"headers": _RETRY_AFTER} if status in (429, 503) else {}),
        }
        for status in statuses
    }


def ok(model: type[BaseModel], status: int = 200, description: str = "OK") -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": description}}


SECURITY_SCHEMES = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": ACCESS_COOKIE,
        "description": "the access token, set HttpOnly by POST /api/login and refreshed by the BFF",
    },
    "refresh": {
        "type": "apiKey",
        "in": "cookie",
        "name": REFRESH_COOKIE,
        "description": "the refresh token (HttpOnly, single use); enough on its own: a new access "
        "cookie is set on the answer",
    },
    "csrf": {
        "type": "apiKey",
        "in": "header",
        "name": CSRF_HEADER,
        "description": f"double submit: on POST, equal to the {CSRF_COOKIE} cookie (GET /api/csrf "
        "gives it and sets the cookie); a browser's Origin must be this site",
    },
}
LOGGED_IN: list[dict[str, list[str]]] = [{"session": []}, {"refresh": []}]
LOGGED_IN_POST: list[dict[str, list[str]]] = [{"session": [], "csrf": []}, {"refresh": [], "csrf": []}]
# The security each route requires; routes not named here need none.
SECURITY: dict[tuple[str, str], list[dict[str, list[str]]]] = {
    ("post", "/api/register"): [{"csrf": []}],
    ("post", "/api/login"): [{"csrf": []}],
    ("post", "/api/logout"): [{"csrf": []}],
    ("get", "/api/me"): LOGGED_IN,
    ("get", "/api/status"): LOGGED_IN,
    ("post", "/api/ocr"): LOGGED_IN_POST,
    ("post", "/api/ocr/pages"): LOGGED_IN_POST,
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "the image (JPEG, PNG, BMP, TIFF, WebP or PDF by default; GET "
                        "/api/config says what the OCR instances take and how large)",
                    }
                },
            }
        }
    },
}


def openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with what FastAPI cannot infer, built once and cached."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            # Validation failures are answered 400 in the ErrorBody shape (app.invalid), never 422.
            operation.get("responses", {}).pop("422", None)
            if (method, path) in SECURITY:
                operation["security"] = SECURITY[(method, path)]
            if method == "post" and path in ("/api/ocr", "/api/ocr/pages"):
                operation["requestBody"] = UPLOAD_BODY
            if (method, path) == ("post", "/api/ocr/pages"):  # JSON lines, not one JSON document
                operation["responses"]["200"]["content"].pop("application/json", None)
    components.setdefault("schemas", {})["PagesEvent"] = PagesEvent.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    for name, definition in components["schemas"]["PagesEvent"].pop("$defs", {}).items():
        components["schemas"].setdefault(name, definition)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    app.openapi_schema = schema
    return schema
