"""BFF pieces without sockets: token expiry, CSRF decisions, refresh sharing, error mapping, type gate."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import pytest
from starlette.requests import Request

from mesh import errors
from web_bff.http_errors import from_rpc
from web_bff.session import RefreshCoalescer, Tokens, csrf_failure, needs_refresh, token_expiry
from web_bff.status_view import SharedSnapshot


def jwt_with(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256'})}.{part(claims)}.sig"


def request(method: str, headers: dict[str, str], cookies: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if cookies:
        raw.append((b"cookie", cookies.encode()))
    raw.append((b"host", b"127.0.0.1:8000"))
    scope = {"type": "http", "method": method, "path": "/api/login", "headers": raw, "scheme": "http"}
    return Request(scope)


def test_token_expiry_and_when_to_refresh() -> None:
    token = jwt_with({"exp": 1000, "sub": "u"})
    assert token_expiry(token) == 1000.0
    assert token_expiry("not-a-jwt") is None and token_expiry("a.!!!.c") is None
    assert not needs_refresh(token, now=900.0)
    assert needs_refresh(token, now=980.0)  # less than 30 s left
    assert needs_refresh(None, now=0.0) and needs_refresh("garbage", now=0.0)


def test_csrf_needs_the_cookie_echoed_in_the_header_from_our_own_origin() -> None:
    cookie = "ocrmesh_csrf=abc123"
    assert csrf_failure(request("GET", {})) is None  # safe methods pass
    assert csrf_failure(request("POST", {}, cookie)) == "missing CSRF token"
    assert csrf_failure(request("POST", {"x-csrf-token": "abc123"})) == "missing CSRF token"
    assert csrf_failure(request("POST", {"x-csrf-token": "abc124"}, cookie)) == "CSRF token does not match"
    assert csrf_failure(request("POST", {"x-csrf-token": "abc123"}, cookie)) is None
    foreign = {"x-csrf-token": "abc123", "origin": "https://evil.example"}
    assert "another site" in str(csrf_failure(request("POST", foreign, cookie)))
    own = {"x-csrf-token": "abc123", "origin": "http://127.0.0.1:8000"}
    assert csrf_failure(request("POST", own, cookie)) is None


async def test_concurrent_refreshes_of_one_token_make_one_call() -> None:
    calls: list[str] = []

    async def refresh(token: str) -> Tokens:
        calls.append(token)
        await asyncio.sleep(0.05)
        return Tokens("access-2", 2000.0, "refresh-2", 9000.0)

    coalescer = RefreshCoalescer()
    got = await asyncio.gather(*(coalescer.refresh("refresh-1", refresh) for _ in range(5)))
    assert calls == ["refresh-1"] and {t.access for t in got} == {"access-2"}
    await coalescer.refresh("refresh-2", refresh)
    assert calls == ["refresh-1", "refresh-2"]


async def test_a_failed_refresh_is_not_remembered() -> None:
    attempts = 0

    async def flaky(token: str) -> Tokens:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("auth away")
        return Tokens("a", 1.0, "r", 2.0)

    coalescer = RefreshCoalescer()
    with pytest.raises(RuntimeError):
        await coalescer.refresh("t", flaky)
    assert (await coalescer.refresh("t", flaky)).access == "a"


def rpc_error(rich: errors.RichError) -> grpc.aio.AioRpcError:
    status = errors.to_grpc_status(rich)
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), details=status.details
    )


def test_grpc_statuses_map_to_http() -> None:
    busy = from_rpc(rpc_error(errors.retry_later("queue full", 2.2)), "ocr")
    assert (busy.status, busy.code, busy.headers["Retry-After"]) == (429, "busy", "3")
    bad = from_rpc(
        rpc_error(errors.bad_request("not an image", [errors.FieldViolation("image", "truncated JPEG")])),
        "ocr",
    )
    assert (bad.status, bad.code, bad.fields) == (400, "bad_image", {"image": "truncated JPEG"})
    gone = from_rpc(rpc_error(errors.unavailable("draining")), "ocr")
    assert gone.status == 503 and gone.headers["Retry-After"] == "1"
    slow = from_rpc(rpc_error(errors.simple(grpc.StatusCode.DEADLINE_EXCEEDED, "late")), "ocr")
    assert slow.status == 504 and "did not answer in time" in slow.message
    taken = from_rpc(rpc_error(errors.simple(grpc.StatusCode.ALREADY_EXISTS, "taken")), "auth")
    assert (taken.status, taken.code) == (409, "taken")
    odd = from_rpc(rpc_error(errors.simple(grpc.StatusCode.INTERNAL, "boom")), "ocr")
    assert odd.status == 502 and "INTERNAL" in odd.message


def bad_image(reason: str) -> grpc.aio.AioRpcError:
    violation = errors.FieldViolation("image", f"{reason.lower()} image", reason)
    return rpc_error(errors.bad_request("invalid image", [violation], reason=f"IMAGE_{reason}"))


def test_ocr_refusing_the_type_of_an_upload_is_415_and_other_bad_images_400() -> None:
    for reason in ("EMPTY", "NOT_AN_IMAGE", "UNSUPPORTED_FORMAT"):
        err = from_rpc(bad_image(reason), "ocr")
        assert (err.status, err.code) == (415, "unsupported_type"), reason
    for reason in ("TRUNCATED", "TOO_MANY_PIXELS", "CORRUPT"):
        err = from_rpc(bad_image(reason), "ocr")
        assert (err.status, err.code) == (400, "bad_image"), reason
        assert err.fields == {"image": f"{reason.lower()} image"}


async def test_status_snapshots_are_shared_by_concurrent_pages_for_a_moment() -> None:
    now = [0.0]
    calls = 0

    async def gather() -> dict[str, object]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return {"n": calls}

    shared = SharedSnapshot(max_age_s=1.0, clock=lambda: now[0])
    got = await asyncio.gather(*(shared.get(gather) for _ in range(5)))
    assert calls == 1 and all(g == {"n": 1} for g in got)
    now[0] = 2.0
    assert await shared.get(gather) == {"n": 2}
