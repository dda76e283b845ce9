"""Start real `ocrmesh serve auth` processes on loopback for tests, and always stop them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration.ocr_fixtures import ROOT, stop


@dataclass
class AuthProcess:
    """A running auth service subprocess."""

    proc: subprocess.Popen[bytes]
    address: str
    instance_id: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_auth(tmp: Path, *args: str, timeout_s: float = 60.0) -> AuthProcess:
    """Start `ocrmesh serve auth --port 0 --bcrypt-cost 4 ARGS` and wait until it is serving."""
    tmp.mkdir(parents=True, exist_ok=True)
    stamp = time.monotonic_ns()
    ready = tmp / f"auth-ready-{stamp}.json"
    log_path = tmp / f"auth-{stamp}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mesh.cli",
                "serve",
                "auth",
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--bcrypt-cost",
                "4",
                "--grace-s",
                "2",
                "--ready-file",
                str(ready),
                *args,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            return AuthProcess(proc, info["address"], info["instance_id"], log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"auth service exited with {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    stop(proc)
    raise TimeoutError(f"auth service not ready in {timeout_s}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def running_auth(tmp: Path, *args: str) -> Iterator[AuthProcess]:
    service = start_auth(tmp, *args)
    try:
        yield service
    finally:
        stop(service.proc)
