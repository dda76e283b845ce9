"""Closed-loop HTTP load (one httpx client per virtual user) reported in ghz's JSON schema."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.loadgen import usable_cpus
from bench.report import CallResult, build_report, ghz_options, go_error

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
RETRY_AFTER_CAP_S = 5.0

# HTTP status -> the gRPC code name ghz would report, by grpc-gateway's mapping read backwards.
_HTTP_TO_CODE = {
    400: "InvalidArgument",
    401: "Unauthenticated",
    403: "PermissionDenied",
    404: "NotFound",
    408: "DeadlineExceeded",
    409: "Aborted",
    413: "InvalidArgument",
    415: "InvalidArgument",
    422: "InvalidArgument",
    429: "ResourceExhausted",
    499: "Canceled",
    500: "Internal",
    501: "Unimplemented",
    502: "Unavailable",
    503: "Unavailable",
    504: "DeadlineExceeded",
}


def code_for_http(status: int) -> str:
    """The Go gRPC code name for an HTTP status (2xx: OK; unknown 4xx: InvalidArgument; 5xx: Unknown)."""
    if 200 <= status < 300:
        return "OK"
    return _HTTP_TO_CODE.get(status, "InvalidArgument" if status < 500 else "Unknown")


def code_for_exception(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "DeadlineExceeded"
    return "Unavailable"  # refused, reset, protocol errors: the server could not be reached or died


def retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class HttpLoad:
    """One HTTP run: `concurrency` virtual users calling back to back for `duration_s`.

    Calls still running when the time is up finish and count (ghz's --duration-stop wait), so
    every accepted request is in the report. A 429 or 503 with Retry-After makes that user wait
    the hint (at most 5 s, never past the end) before calling again, like the gRPC clients do.
    """

    url: str
    concurrency: int
    duration_s: float
    timeout_s: float = 120.0
    name: str = ""
    honor_retry_after: bool = True


def new_client(timeout_s: float) -> httpx.AsyncClient:
    """One virtual user's client: its own connection and cookie jar, as one browser has."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits)


async def run_http_load(
    load: HttpLoad, send: Send, clients: list[httpx.AsyncClient] | None = None
) -> dict[str, Any]:
    """Run the load, one virtual user per client: `clients` (kept open: sessions logged in once are
    reused from run to run), else fresh ones made and closed here."""
    results: list[CallResult] = []
    offset = time.time_ns() - time.perf_counter_ns()
    owned = clients is None
    if clients is None:
        clients = [new_client(load.timeout_s) for _ in range(load.concurrency)]
    if len(clients) != load.concurrency:
        raise ValueError(f"{len(clients)} clients for {load.concurrency} virtual users")
    try:
        began = time.perf_counter_ns()
        end = began + round(load.duration_s * 1e9)

        async def user(client: httpx.AsyncClient) -> None:
            while time.perf_counter_ns() < end:
                start = time.perf_counter_ns()
                wait = None
                try:
                    response = await send(client)
                    code = code_for_http(response.status_code)
                    error = "" if code == "OK" else go_error(code, f"HTTP {response.status_code}")
                    if code in ("ResourceExhausted", "Unavailable") and load.honor_retry_after:
                        wait = retry_after_s(response)
                except httpx.HTTPError as exc:
                    code = code_for_exception(exc)
                    error = go_error(code, f"{type(exc).__name__}: {exc}")
                results.append(CallResult(start + offset, time.perf_counter_ns() - start, code, error))
                if wait:
                    left = (end - time.perf_counter_ns()) / 1e9
                    await asyncio.sleep(max(0.0, min(wait, RETRY_AFTER_CAP_S, left)))

        await asyncio.gather(*(user(client) for client in clients))
        total_ns = time.perf_counter_ns() - began
    finally:
        if owned:
            await asyncio.gather(*(client.aclose() for client in clients))
    options = ghz_options(
        call=f"POST {load.url}",
        host=load.url,
        insecure=True,
        concurrency=load.concurrency,
        total=0,
        duration_ns=round(load.duration_s * 1e9),
        timeout_ns=round(load.timeout_s * 1e9),
        cpus=usable_cpus(),
        name=load.name,
    )
    return build_report(
        results,
        options,
        total_ns,
        "timeout",
        tags={"ocrmesh.engine": "http", "ocrmesh.duration-stop": "wait"},
    )
