"""Status routes: the registry console for logged-in users and the health probe."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.responses import JSONResponse

from mesh import credentials
from mesh.status import collect as collect_snapshot
from web_bff.api_schema import HealthReply, StatusReply, errors, ok
from web_bff.bff_state import State
from web_bff.http_errors import ApiError
from web_bff.logged_in import Access, with_login

router = APIRouter()


@router.get(
    "/api/status",
    summary="services and their health; instances, addresses and the balancer for admins (--admins)",
    response_model=None,
    responses={**ok(StatusReply), **errors(401, 429, 502, 503, 504)},
)
async def status(request: Request, response: Response, access: Access, state: State) -> dict[str, Any]:
    config, backends = state.config, state.backends
    # Who is asking, as the auth service says (the cookie's own claims are not trusted here).
    me = await with_login(request, response, state, access, backends.whoami, "auth")
    admin = me.user.username in config.admin_names()

    async def gather() -> dict[str, Any]:
        return await collect_snapshot(config.etcd, config.status_timeout_s, credentials.bearer(access))

    try:
        snapshot = await state.registry_view.get(gather)
    except ConnectionError as exc:
        raise ApiError(503, "unavailable", f"{exc}: is etcd running?", {"Retry-After": "2"}) from None
    if not admin:
        # Internal addresses, the etcd endpoint and the xDS nodes are a map for an attacker.
        return {"at": snapshot["at"], "services": snapshot["services"], "detail": False}
    bff = {"auth": backends.auth.status(), "ocr": backends.ocr.status()}
    return {**snapshot, "bff": bff, "detail": True}


@router.get(
    "/healthz",
    summary="200 once an auth and an OCR endpoint are known, else 503",
    response_model=None,
    responses={
        **ok(HealthReply),
        503: {"model": HealthReply, "description": "an auth or OCR endpoint is missing"},
    },
)
async def healthz(state: State) -> JSONResponse:
    missing = state.backends.missing()
    body = {"status": "degraded" if missing else "ok", "missing": missing}
    return JSONResponse(body, status_code=503 if missing else 200)
