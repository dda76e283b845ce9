"""The FastAPI app: JSON API (register, login, logout, me, ocr, status) and the static web UI."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from ocrmesh.ocr.v1 import ocr_pb2
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, JSONResponse

from mesh import credentials
from mesh.logs import request_id
from mesh.status import collect as collect_snapshot
from web_bff.backends import Backends
from web_bff.config import BffConfig
from web_bff.http_errors import ApiError, from_rpc
from web_bff.session import (
    ACCESS_COOKIE,
    REFRESH_COOKIE,
    RefreshCoalescer,
    clear_tokens,
    csrf_failure,
    csrf_token,
    needs_refresh,
    set_csrf,
    set_tokens,
)
from web_bff.status_view import SharedSnapshot
from web_bff.upload import ACCEPTED_FORMATS, MULTIPART_OVERHEAD, BodyLimit, UnsupportedImage, image_format

STATIC = Path(__file__).resolve().parent / "static"
OCR_PATH = "/api/ocr"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
}


class Credentials(BaseModel):
    """A user name and password, as the login and register forms send them."""

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


def user_json(user: Any) -> dict[str, str]:
    return {"id": user.user_id, "username": user.username}


def result_json(result: ocr_pb2.OcrResult) -> dict[str, Any]:
    """An OcrResult as the page uses it: lines with 4-point boxes, timing and who served it."""
    t, s = result.timing, result.served_by
    return {
        "text": result.text,
        "lines": [
            {
                "text": line.text,
                "score": round(line.score, 4),
                "box": [[round(p.x, 1), round(p.y, 1)] for p in line.box],
            }
            for line in result.lines
        ],
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


def create_app(config: BffConfig, backends: Backends | None = None) -> FastAPI:
    """The BFF app; it opens the mesh clients on startup and closes them on shutdown."""
    mesh = backends or Backends(config.etcd, config.auth_timeout_s, config.ocr_timeout_s)
    coalescer = RefreshCoalescer()
    registry_view = SharedSnapshot()
    cookie_mode = config.cookie_secure  # validated by choices

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
    app.state.backends = mesh
    app.add_middleware(
        BodyLimit,
        limit=config.max_upload_bytes + MULTIPART_OVERHEAD,
        paths={OCR_PATH},
        file_limit=config.max_upload_bytes,
    )

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Request id, CSRF check on state-changing API calls, CSRF cookie, security headers."""
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        request.state.csrf = csrf_token(request)  # the cookie's, or a new one set on the answer
        try:
            why = csrf_failure(request) if request.url.path.startswith("/api/") else None
            if why is not None:
                response: Response = ApiError(
                    403, "csrf", f"{why}: reload the page and try again (the page sends X-CSRF-Token)"
                ).response()
            else:
                response = await call_next(request)
            set_csrf(response, request, request.state.csrf, cookie_mode)  # type: ignore[arg-type]
            response.headers["x-request-id"] = rid
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response
        finally:
            request_id.reset(token)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        response = exc.response()
        if exc.end_session:
            clear_tokens(response)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            {"error": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        fields = {str(e["loc"][-1]): str(e["msg"]) for e in exc.errors() if e.get("loc")}
        return ApiError(
            400,
            "invalid",
            "the request is not valid: " + "; ".join(f"{k}: {v}" for k, v in fields.items()),
            fields=fields,
        ).response()

    async def refreshed(request: Request, response: Response) -> str:
        """A fresh access token from the refresh cookie (one Refresh per token, shared)."""
        refresh = request.cookies.get(REFRESH_COOKIE)
        if not refresh:
            raise ApiError(401, "login_required", "log in first", end_session=True)
        try:
            tokens = await coalescer.refresh(refresh, mesh.refresh)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc(exc, "auth")
            if err.status == 401:
                raise ApiError(
                    401, "login_required", "your session has ended: log in again", end_session=True
                ) from None
            raise err from None
        set_tokens(response, request, tokens, cookie_mode, time.time())  # type: ignore[arg-type]
        return tokens.access

    async def session(request: Request, response: Response) -> str:
        """The caller's access token, refreshed transparently when it is missing or about to expire."""
        access = request.cookies.get(ACCESS_COOKIE)
        if access and not needs_refresh(access, time.time()):
            return access
        return await refreshed(request, response)

    async def with_login(
        request: Request, response: Response, access: str, call: Callable[[str], Awaitable[Any]], service: str
    ) -> Any:
        """Run `call(access)`; if the service says the token is no good, refresh once and retry."""
        try:
            return await call(access)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise from_rpc(exc, service) from None
        try:
            return await call(await refreshed(request, response))
        except grpc.aio.AioRpcError as exc:
            err = from_rpc(exc, service)
            if err.status == 401:
                err.end_session, err.message = True, f"{err.message}: log in again"
            raise err from None

    @app.get("/api/csrf", summary="the CSRF token to send as X-CSRF-Token (also set as a cookie)")
    async def get_csrf(request: Request) -> dict[str, str]:
        return {"csrf": request.state.csrf, "header": "X-CSRF-Token"}

    @app.get("/api/config", summary="what the page needs to know: upload limit and accepted formats")
    async def get_config() -> dict[str, Any]:
        return {"max_upload_bytes": config.max_upload_bytes, "formats": list(ACCEPTED_FORMATS)}

    @app.post("/api/register", status_code=201, summary="create an account (then log in)")
    async def register(body: Credentials) -> dict[str, Any]:
        try:
            user = await mesh.register(body.username, body.password)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc(exc, "auth")
            if err.status == 409:
                err.fields = {"username": err.message}
            raise err from None
        return {"user": user_json(user)}

    @app.post("/api/login", summary="log in: the session lives in HttpOnly cookies")
    async def login(body: Credentials, request: Request, response: Response) -> dict[str, Any]:
        client = request.client.host if request.client else ""
        try:
            user, tokens = await mesh.login(body.username, body.password, client)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc(exc, "auth")
            if err.status == 401:
                err.code = "bad_credentials"
            raise err from None
        set_tokens(response, request, tokens, cookie_mode, time.time())  # type: ignore[arg-type]
        return {"user": user_json(user), "expires_at": tokens.access_expires_at}

    @app.post("/api/logout", summary="end the session (the refresh token is revoked)")
    async def logout(request: Request, response: Response) -> dict[str, Any]:
        refresh = request.cookies.get(REFRESH_COOKIE)
        revoked = 0
        if refresh:
            with contextlib.suppress(grpc.aio.AioRpcError):  # already ended or unknown: logged out anyway
                revoked = await mesh.logout(refresh)
        clear_tokens(response)
        return {"ok": True, "revoked_sessions": revoked}

    @app.get("/api/me", summary="who is logged in")
    async def me(request: Request, response: Response, access: str = Depends(session)) -> dict[str, Any]:
        reply = await with_login(request, response, access, mesh.whoami, "auth")
        return {"user": user_json(reply.user), "expires_at": reply.token_expires_at.ToSeconds()}

    @app.post(OCR_PATH, summary="recognise the text in an uploaded image (multipart field `file`)")
    async def ocr(request: Request, response: Response, access: str = Depends(session)) -> dict[str, Any]:
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
        if len(data) > config.max_upload_bytes:
            raise ApiError(
                413,
                "too_large",
                f"the image is larger than {config.max_upload_bytes / 1048576:.1f} MiB: send a smaller one",
                extra={"limit_bytes": config.max_upload_bytes},
            )
        try:
            kind = image_format(data)
        except UnsupportedImage as exc:
            raise ApiError(415, "unsupported_type", str(exc)) from None
        filename = (upload.filename or "")[:255]
        started = time.perf_counter()

        async def call(token: str) -> ocr_pb2.OcrResult:
            return await mesh.recognize(data, filename, token)

        result = await with_login(request, response, access, call, "ocr")
        return {
            **result_json(result),
            "bff_ms": round((time.perf_counter() - started) * 1000, 1),
            "filename": filename,
            "bytes": len(data),
            "format": kind,
        }

    @app.get("/api/status", summary="services, instances and their health (the registry console)")
    async def status(access: str = Depends(session)) -> dict[str, Any]:
        async def gather() -> dict[str, Any]:
            return await collect_snapshot(config.etcd, config.status_timeout_s, credentials.bearer(access))

        try:
            snapshot = await registry_view.get(gather)
        except ConnectionError as exc:
            raise ApiError(503, "unavailable", f"{exc}: is etcd running?", {"Retry-After": "2"}) from None
        return {**snapshot, "bff": {"auth": mesh.auth.status(), "ocr": mesh.ocr.status()}}

    @app.get("/healthz", summary="200 once an auth and an OCR endpoint are known, else 503")
    async def healthz() -> JSONResponse:
        missing = mesh.missing()
        body = {"status": "degraded" if missing else "ok", "missing": missing}
        return JSONResponse(body, status_code=503 if missing else 200)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
