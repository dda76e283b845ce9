"""Status routes: the registry console for logged-in users and the health probe."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse

from mesh import credentials
from mesh.status import collect as collect_snapshot
from web_bff.bff_state import State
from web_bff.http_errors import ApiError
from web_bff.logged_in import Access

router = APIRouter()


@router.get("/api/status", summary="services, instances and their health (the registry console)")
async def status(access: Access, state: State) -> dict[str, Any]:
    config, backends = state.config, state.backends

    async def gather() -> dict[str, Any]:
        return await collect_snapshot(config.etcd, config.status_timeout_s, credentials.bearer(access))

    try:
        snapshot = await state.registry_view.get(gather)
    except ConnectionError as exc:
        raise ApiError(503, "unavailable", f"{exc}: is etcd running?", {"Retry-After": "2"}) from None
    return {**snapshot, "bff": {"auth": backends.auth.status(), "ocr": backends.ocr.status()}}


@router.get("/healthz", summary="200 once an auth and an OCR endpoint are known, else 503")
async def healthz(state: State) -> JSONResponse:
    missing = state.backends.missing()
    body = {"status": "degraded" if missing else "ok", "missing": missing}
    return JSONResponse(body, status_code=503 if missing else 200)
