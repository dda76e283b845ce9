"""A BFF session as a browser holds one: CSRF token, login into HttpOnly cookies, image uploads."""

from __future__ import annotations

import mimetypes
from urllib.parse import urljoin

import httpx

from bench.http_load import Send

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


async def bff_login(client: httpx.AsyncClient, base_url: str, username: str, password: str) -> None:
    """Log this client in; its cookie jar then holds the session, its headers the CSRF token."""
    await csrf(client, base_url)
    reply = await client.post(
        urljoin(base_url, "/api/login"), json={"username": username, "password": password}
    )
    if reply.status_code != 200:
        raise WebSessionError(f"POST /api/login at {base_url}: HTTP {reply.status_code} {reply.text[:200]}")


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
