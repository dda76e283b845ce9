"""Real `ocrmesh` commands as test subprocesses: started with a ready file and a log, always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil

ROOT = Path(__file__).resolve().parents[2]


def start_command(
    tmp: Path,
    name: str,
    argv: Sequence[str],
    extra: Sequence[str] = (),
    *,
    timeout_s: float,
) -> tuple[subprocess.Popen[bytes], dict[str, Any], Path]:
    """Run `python -m cli ARGV --ready-file F EXTRA` from the repo root, output to a log in
    `tmp`, and wait for F; (process, what F says, log path). `name` ("ocr service") names files
    and errors."""
    tmp.mkdir(parents=True, exist_ok=True)
    stamp = time.monotonic_ns()
    prefix = name.split()[0]
    ready = tmp / f"{prefix}-ready-{stamp}.json"
    log_path = tmp / f"{prefix}-{stamp}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *argv, "--ready-file", str(ready), *extra],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            return proc, json.loads(ready.read_text()), log_path
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    stop(proc)
    raise TimeoutError(f"{name} not ready in {timeout_s}s:\n{log_path.read_text()}")


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> int:
    """SIGTERM, wait, then SIGKILL the process and any children left behind."""
    if proc.poll() is None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
    return proc.returncode


class _Running(Protocol):
    @property
    def proc(self) -> subprocess.Popen[bytes]: ...


S = TypeVar("S", bound=_Running)


@contextlib.contextmanager
def stopping(service: S) -> Iterator[S]:
    """`with stopping(start_x(...)) as service:` stops the service's process on the way out."""
    try:
        yield service
    finally:
        stop(service.proc)
