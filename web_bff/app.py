"""The FastAPI app: wires the guard, the error handlers, the route modules and the static web UI."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, JSONResponse

from mesh.logs import request_id
from web_bff import account_routes, api_schema, ocr_routes, pages_route, status_routes
from web_bff.backends import Backends
from web_bff.bff_state import BffState
from web_bff.config import BffConfig
from web_bff.http_errors import ApiError
from web_bff.session import clear_tokens, csrf_failure, csrf_token, set_csrf
from web_bff.upload import MULTIPART_OVERHEAD, BodyLimit

STATIC = Path(__file__).resolve().parent / "static"
OCR_PATH = ocr_routes.OCR_PATH
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
}


async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Request id, CSRF check on state-changing API calls, CSRF cookie, security headers."""
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    token = request_id.set(rid)
    request.state.csrf = csrf_token(request)  # the cookie's, or a new one set on the answer
    cookie_mode = request.app.state.bff.config.cookie_secure  # validated by choices
    try:
        why = csrf_failure(request) if request.url.path.startswith("/api/") else None
        if why is not None:
            response: Response = ApiError(
                403, "csrf", f"{why}: reload the page and try again (the page sends X-CSRF-Token)"
            ).response()
        else:
            response = await call_next(request)
        set_csrf(response, request, request.state.csrf, cookie_mode)
        response.headers["x-request-id"] = rid
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
    finally:
        request_id.reset(token)


async def api_error(_: Request, exc: Exception) -> Response:
    """An ApiError as its JSON answer; one that ends the session clears the cookies too."""
    assert isinstance(exc, ApiError)
    response = exc.response()
    if exc.end_session:
        clear_tokens(response)
    return response


async def http_error(_: Request, exc: Exception) -> Response:
    """Starlette's 404/405/... in the API's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
    return JSONResponse(
        {"error": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


async def invalid(_: Request, exc: Exception) -> Response:
    """A request body that fails validation: 400 naming each field and what is wrong with it."""
    assert isinstance(exc, RequestValidationError)
    fields = {str(e["loc"][-1]): str(e["msg"]) for e in exc.errors() if e.get("loc")}
    return ApiError(
        400,
        "invalid",
        "the request is not valid: " + "; ".join(f"{k}: {v}" for k, v in fields.items()),
        fields=fields,
    ).response()


async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


def create_app(config: BffConfig, backends: Backends | None = None) -> FastAPI:
    """The BFF app; it opens the mesh clients on startup and closes them on shutdown."""
    mesh = backends or Backends(config.etcd, config.auth_timeout_s, config.ocr_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await mesh.start()
        try:
            yield
        finally:
            await mesh.close()

    app = FastAPI(
        title="ocrmesh BFF",
        summary="Browser API in front of the ocrmesh auth and OCR services",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN, which neither the CSP nor an offline box allows
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.bff = BffState(config, mesh)
    app.add_middleware(
        BodyLimit,
        limit=config.max_upload_bytes + MULTIPART_OVERHEAD,
        paths={OCR_PATH, pages_route.PAGES_PATH},
        file_limit=config.max_upload_bytes,
    )
    app.middleware("http")(guard)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    for routes in (account_routes, ocr_routes, pages_route, status_routes):
        app.include_router(routes.router)
    app.get("/", include_in_schema=False)(index)
    app.openapi = lambda: api_schema.openapi(app)  # type: ignore[method-assign]
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
