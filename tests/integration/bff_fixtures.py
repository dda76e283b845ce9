"""A whole mesh for BFF tests: etcd, auth (SQLite), OCR (tokens required) and `ocrmesh serve bff`."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.integration.auth_fixtures import AuthProcess, start_auth
from tests.integration.etcd_fixtures import make_etcd
from tests.integration.ocr_fixtures import OcrProcess, start_ocr
from tests.integration.service_process import start_command, stop

T = TypeVar("T")
ADMINS = ("api-admin", "ui-admin")
"""User names the test meshes' BFF shows the full status page to (`--admins`)."""


class LoopThread:
    """An event loop on its own thread, so module-scoped fixtures can own async resources (etcd)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fixture-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class BffProcess:
    """A running `ocrmesh serve bff` subprocess and what its ready file said."""

    proc: subprocess.Popen[bytes]
    url: str
    ready: dict[str, Any]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_bff(tmp: Path, etcd: str, *args: str, timeout_s: float = 90.0) -> BffProcess:
    """Start `ocrmesh serve bff --port 0` and wait for its ready file."""
    proc, info, log_path = start_command(
        tmp, "bff", ["serve", "bff", "--etcd", etcd, "--port", "0"], args, timeout_s=timeout_s
    )
    return BffProcess(proc, info["url"], info, log_path)


@dataclass
class Mesh:
    """etcd + auth + OCR instances + a BFF, all real processes on loopback."""

    etcd: str
    auth: AuthProcess
    ocr: list[OcrProcess]
    bff: BffProcess
    stopped: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.bff.url


@contextlib.contextmanager
def running_mesh(tmp: Path, *ocr_args: tuple[str, ...], auth_args: tuple[str, ...] = ()) -> Iterator[Mesh]:
    """Start the mesh (OCR instances started in parallel, each with `--workers 1 --require-auth`
    plus its own args; auth with `auth_args`), yield it, and stop everything whatever happens."""
    loop = LoopThread()
    etcd = make_etcd(tmp, "etcd")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        loop.run(etcd.start())
        endpoint = etcd.endpoint
        db = f"sqlite+aiosqlite:///{tmp / 'auth.db'}"
        auth = start_auth(tmp / "auth", "--etcd", endpoint, "--db", db, *auth_args)
        procs.append(auth.proc)
        base = ("--workers", "1", "--etcd", endpoint, "--require-auth")
        with ThreadPoolExecutor(max(1, len(ocr_args))) as pool:
            futures = [
                pool.submit(start_ocr, tmp / f"ocr{i}", *base, *args) for i, args in enumerate(ocr_args)
            ]
        ocr = []
        for future in futures:
            if future.exception() is None:
                ocr.append(future.result())
                procs.append(ocr[-1].proc)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        bff = start_bff(tmp / "bff", endpoint, "--admins", ",".join(ADMINS))
        procs.append(bff.proc)
        yield Mesh(endpoint, auth, ocr, bff)
    finally:
        for proc in reversed(procs):
            stop(proc)
        with contextlib.suppress(Exception):
            loop.run(etcd.stop())
        loop.close()


@contextlib.contextmanager
def api_client(url: str) -> Iterator[httpx.Client]:
    """An HTTP client that keeps cookies and sends the CSRF token header as the page does."""
    with httpx.Client(base_url=url, timeout=90.0) as client:
        client.headers["X-CSRF-Token"] = client.get("/api/csrf").json()["csrf"]
        yield client


def register_and_login(client: httpx.Client, username: str, password: str = "correct horse 42") -> None:
    got = client.post("/api/register", json={"username": username, "password": password})
    assert got.status_code == 201, got.text
    got = client.post("/api/login", json={"username": username, "password": password})
    assert got.status_code == 200, got.text
