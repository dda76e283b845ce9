"""Auth services for tests: real `ocrmesh serve auth` processes (always stopped), fast in-process configs."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auth_svc.config import AuthConfig
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
    """Start `ocrmesh serve auth --port 0 --bcrypt-cost 4 ARGS` and wait until it is serving.

    Tests register many accounts from one address (127.0.0.1), so the per-address registration
    throttle is raised out of their way; test_throttles.py checks it at its default."""
    argv = ["serve", "auth", "--port", "0", "--metrics-port", "-1", "--bcrypt-cost", "4", "--grace-s", "2"]
    argv += ["--throttle-register-per-address", "10000"]
    proc, info, log_path = start_command(tmp, "auth service", argv, args, timeout_s=timeout_s)
    return AuthProcess(proc, info["address"], info["instance_id"], log_path)


def running_auth(tmp: Path, *args: str) -> contextlib.AbstractContextManager[AuthProcess]:
    """`with running_auth(tmp, ARGS) as service:` a started auth service, stopped on the way out."""
    return stopping(start_auth(tmp, *args))


def fast_config(db_url: str, **over: Any) -> AuthConfig:
    """An AuthConfig for an in-process AuthInstance that starts and stops fast: a free port, bcrypt
    cost 4 on 2 threads, no metrics, new keys sign at once, 1 s grace and no drain linger, and no
    practical limit on registrations from one address (tests register many from 127.0.0.1)."""
    base = AuthConfig(
        port=0,
        db_url=db_url,
        bcrypt_cost=4,
        bcrypt_concurrency=2,
        metrics_port=-1,
        key_publish_s=0.0,
        grace_s=1.0,
        drain_linger_s=0.0,
        throttle_register_per_address=10_000,
    )
    return dataclasses.replace(base, **over)
