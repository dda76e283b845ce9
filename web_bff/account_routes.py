"""Account routes: the CSRF token, page config, register, login, logout, who am I."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import grpc
from fastapi import APIRouter, Request, Response

from web_bff.api_schema import (
    ConfigReply,
    Credentials,
    CsrfReply,
    LogoutReply,
    SessionReply,
    UserReply,
    errors,
    ok,
)
from web_bff.bff_state import State
from web_bff.http_errors import from_rpc
from web_bff.logged_in import Access, with_login
from web_bff.session import REFRESH_COOKIE, clear_tokens, set_tokens

router = APIRouter()


def user_json(user: Any) -> dict[str, str]:
    return {"id": user.user_id, "username": user.username}


@router.get(
    "/api/csrf",
    summary="the CSRF token to send as X-CSRF-Token (also set as a cookie)",
    response_model=None,
    responses=ok(CsrfReply),
)
async def get_csrf(request: Request) -> dict[str, str]:
    return {"csrf": request.state.csrf, "header": "X-CSRF-Token"}


@router.get(
    "/api/config",
    summary="what the page needs to know: upload limit and accepted formats",
    response_model=None,
    responses=ok(ConfigReply),
)
async def get_config(state: State) -> dict[str, Any]:
    max_bytes, formats = state.upload_limits()
    return {"max_upload_bytes": max_bytes, "formats": formats}


@router.post(
    "/api/register",
    status_code=201,
    summary="create an account (then log in)",
    response_model=None,
    responses={**ok(UserReply, 201, "created"), **errors(400, 403, 409, 413, 429, 502, 503, 504)},
)
async def register(body: Credentials, request: Request, state: State) -> dict[str, Any]:
    client = request.client.host if request.client else ""
    try:
        user = await state.backends.register(body.username, body.password, client)
    except grpc.aio.AioRpcError as exc:
        err = from_rpc(exc, "auth")
        if err.status == 409:
            err.fields = {"username": err.message}
        raise err from None
    return {"user": user_json(user)}


@router.post(
    "/api/login",
    summary="log in: the session lives in HttpOnly cookies",
    response_model=None,
    responses={**ok(SessionReply), **errors(400, 401, 403, 413, 429, 502, 503, 504)},
)
async def login(body: Credentials, request: Request, response: Response, state: State) -> dict[str, Any]:
    client = request.client.host if request.client else ""
    try:
        user, tokens = await state.backends.login(body.username, body.password, client)
    except grpc.aio.AioRpcError as exc:
        err = from_rpc(exc, "auth")
        if err.status == 401:
            err.code = "bad_credentials"
        raise err from None
    set_tokens(response, request, tokens, state.config.cookie_secure, time.time())  # type: ignore[arg-type]
    return {"user": user_json(user), "expires_at": tokens.access_expires_at}


@router.post(
    "/api/logout",
    summary="end the session (the refresh token is revoked)",
    response_model=None,
    responses={**ok(LogoutReply), **errors(403, 413)},
)
async def logout(request: Request, response: Response, state: State) -> dict[str, Any]:
    refresh = request.cookies.get(REFRESH_COOKIE)
    revoked = 0
    if refresh:
        with contextlib.suppress(grpc.aio.AioRpcError):  # already ended or unknown: logged out anyway
            revoked = await state.backends.logout(refresh)
    clear_tokens(response)
    return {"ok": True, "revoked_sessions": revoked}


@router.get(
    "/api/me",
    summary="who is logged in",
    response_model=None,
    responses={**ok(SessionReply), **errors(401, 429, 502, 503, 504)},
)
async def me(
    request: Request,
    response: Response,
    access: Access,
    state: State,
) -> dict[str, Any]:
    reply = await with_login(request, response, state, access, state.backends.whoami, "auth")
    return {"user": user_json(reply.user), "expires_at": reply.token_expires_at.ToSeconds()}
