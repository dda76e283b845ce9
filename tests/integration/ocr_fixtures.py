"""Start real `ocrmesh serve ocr` processes on loopback for tests, and always stop them."""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.process_rss import tree_rss_bytes
from tests.integration.service_process import ROOT, start_command, stop, stopping

__all__ = ["ROOT", "OcrProcess", "running_ocr", "start_ocr", "stop"]  # ROOT and stop: for older imports


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
    proc, info, log_path = start_command(
        tmp, "ocr service", ["serve", "ocr", "--port", "0", "--metrics-port", "0"], args, timeout_s=timeout_s
    )
    return OcrProcess(proc, info["address"], info["metrics"], log_path)


def running_ocr(tmp: Path, *args: str) -> contextlib.AbstractContextManager[OcrProcess]:
    """`with running_ocr(tmp, ARGS) as service:` a started OCR service, stopped on the way out."""
    return stopping(start_ocr(tmp, *args))
