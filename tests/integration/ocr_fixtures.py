"""Start real `ocrmesh serve ocr` processes on loopback for tests, and always stop them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.process_rss import tree_rss_bytes

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OcrProcess:
    """A running OCR service subprocess."""

    proc: subprocess.Popen[bytes]
    address: str
    metrics: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree_rss_bytes(self) -> int:
        """RSS of the service and all its worker processes."""
        return tree_rss_bytes(self.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_ocr(tmp: Path, *args: str, timeout_s: float = 180.0) -> OcrProcess:
    """Start `ocrmesh serve ocr --port 0 ARGS` and wait until it reports serving."""
    tmp.mkdir(parents=True, exist_ok=True)
    ready = tmp / f"ready-{time.monotonic_ns()}.json"
    log_path = tmp / f"ocr-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mesh.cli",
                "serve",
                "ocr",
                "--port",
                "0",
                "--metrics-port",
                "0",
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
            return OcrProcess(proc, info["address"], info["metrics"], log_path)
        if proc.poll() is not None:
            raise RuntimeError(
                f"ocr service exited with {proc.returncode}:\n{log_path.read_text()}"
            )
        time.sleep(0.1)
    stop(proc)
    raise TimeoutError(f"ocr service not ready in {timeout_s}s:\n{log_path.read_text()}")


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


@contextlib.contextmanager
def running_ocr(tmp: Path, *args: str) -> Iterator[OcrProcess]:
    service = start_ocr(tmp, *args)
    try:
        yield service
    finally:
        stop(service.proc)
