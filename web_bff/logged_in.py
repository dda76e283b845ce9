"""The caller's session: its access token (refreshed when due) and calls retried once on expiry."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import grpc
from fastapi import Depends, Request, Response

from web_bff.bff_state import BffState, State
from web_bff.http_errors import ApiError, from_rpc
from web_bff.session import ACCESS_COOKIE, REFRESH_COOKIE, needs_refresh, set_tokens


async def refreshed(request: Request, response: Response, state: BffState) -> str:
    """A fresh access token from the refresh cookie (one Refresh per token, shared)."""
    refresh = request.cookies.get(REFRESH_COOKIE)
    if not refresh:
        raise ApiError(401, "login_required", "log in first", end_session=True)
    try:
        tokens = await state.coalescer.refresh(refresh, state.backends.refresh)
    except grpc.aio.AioRpcError as exc:
        err = from_rpc(exc, "auth")
        if err.status == 401:
            raise ApiError(
                401, "login_required", "your session has ended: log in again", end_session=True
            ) from None
        raise err from None
    set_tokens(response, request, tokens, state.config.cookie_secure, time.time())  # type: ignore[arg-type]
    return tokens.access


async def session(request: Request, response: Response, state: State) -> str:
    """The caller's access token, refreshed transparently when it is missing or about to expire."""
    access = request.cookies.get(ACCESS_COOKIE)
    if access and not needs_refresh(access, time.time()):
        return access
    return await refreshed(request, response, state)


async def with_login(
    request: Request,
    response: Response,
    state: BffState,
    access: str,
    call: Callable[[str], Awaitable[Any]],
    service: str,
) -> Any:
    """Run `call(access)`; if the service says the token is no good, refresh once and retry."""
    try:
        return await call(access)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise from_rpc(exc, service) from None
    try:
        return await call(await refreshed(request, response, state))
    except grpc.aio.AioRpcError as exc:
        err = from_rpc(exc, service)
        if err.status == 401:
            err.end_session, err.message = True, f"{err.message}: log in again"
        raise err from None


Access = Annotated[str, Depends(session)]
"""A route parameter typed `Access` receives the caller's access token (or the route answers 401)."""
