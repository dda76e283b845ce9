"""A BFF session as a browser holds one: CSRF token, login into HttpOnly cookies, image uploads."""

from __future__ import annotations

import asyncio
import mimetypes
from urllib.parse import urljoin

import httpx

from bench.http_load import RETRY_AFTER_CAP_S, Send, new_client, retry_after_s

CSRF_HEADER = "X-CSRF-Token"


class WebSessionError(RuntimeError):
    """The BFF refused the bench's session set-up; the message has its status and answer."""


async def csrf(client: httpx.AsyncClient, base_url: str) -> str:
    """GET /api/csrf: the token to send back as X-CSRF-Token (the BFF also sets it as a cookie)."""
    reply = await client.get(urljoin(base_url, "/api/csrf"))
    if reply.status_code != 200:
        raise WebSessionError(f"GET /api/csrf at {base_url}: HTTP {reply.status_code} {reply.text[:200]}")
    token = str(reply.json()["csrf"])
    client.headers[CSRF_HEADER] = token
    return token


async def bff_login(
    client: httpx.AsyncClient, base_url: str, username: str, password: str, tries: int = 20
) -> None:
    """Log this client in; its cookie jar then holds the session, its headers the CSRF token.

    A 429 or 503 (the auth service throttles one user's parallel logins, or is busy) is retried
    after its Retry-After."""
    await csrf(client, base_url)
    for _ in range(tries):
        reply = await client.post(
            urljoin(base_url, "/api/login"), json={"username": username, "password": password}
        )
        if reply.status_code == 200:
            return
        if reply.status_code not in (429, 503):
            break
        await asyncio.sleep(min(RETRY_AFTER_CAP_S, retry_after_s(reply) or 1.0))
    raise WebSessionError(f"POST /api/login at {base_url}: HTTP {reply.status_code} {reply.text[:200]}")


class BffSessions:
    """Logged-in sessions on one BFF, made on demand (a few logins at a time) and reused by every
    run on that mesh, so a cell's figures hold no logins. `close()` ends them."""

    LOGINS_AT_ONCE = 4  # below the auth service's cap on one user's logins in flight

    def __init__(self, base_url: str, username: str | None, password: str | None, timeout_s: float) -> None:
        self.base_url, self.username, self.password = base_url, username, password
        self.timeout_s = timeout_s
        self.clients: list[httpx.AsyncClient] = []

    async def take(self, count: int) -> list[httpx.AsyncClient]:
        while len(self.clients) < count:
            batch = [
                new_client(self.timeout_s) for _ in range(min(self.LOGINS_AT_ONCE, count - len(self.clients)))
            ]
            try:
                await asyncio.gather(*(self._open(client) for client in batch))
            except BaseException:
                await asyncio.gather(*(client.aclose() for client in batch))
                raise
            self.clients += batch
        return self.clients[:count]

    async def _open(self, client: httpx.AsyncClient) -> None:
        if self.username and self.password:
            await bff_login(client, self.base_url, self.username, self.password)
        else:
            await csrf(client, self.base_url)

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))
        self.clients = []


def mime_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def bff_ocr_sender(base_url: str, image: bytes, filename: str) -> Send:
    """One upload to POST /api/ocr (multipart field `file`), as the web page sends it."""
    url = urljoin(base_url, "/api/ocr")
    mime = mime_type(filename)

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        if CSRF_HEADER not in client.headers:
            await csrf(client, base_url)
        return await client.post(url, files={"file": (filename, image, mime)})

    return send


def peer_ocr_sender(url: str, image: bytes, filename: str) -> Send:
    """One upload to rapidocr-api's POST /ocr (multipart field `image_file`)."""
    mime = mime_type(filename)

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(url, files={"image_file": (filename, image, mime)})

    return send
