"""Start real `ocrmesh serve auth` processes on loopback for tests, and always stop them."""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.integration.service_process import start_command, stopping


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
    argv = ["serve", "auth", "--port", "0", "--metrics-port", "-1", "--bcrypt-cost", "4", "--grace-s", "2"]
    proc, info, log_path = start_command(tmp, "auth service", argv, args, timeout_s=timeout_s)
    return AuthProcess(proc, info["address"], info["instance_id"], log_path)


def running_auth(tmp: Path, *args: str) -> contextlib.AbstractContextManager[AuthProcess]:
    """`with running_auth(tmp, ARGS) as service:` a started auth service, stopped on the way out."""
    return stopping(start_auth(tmp, *args))
