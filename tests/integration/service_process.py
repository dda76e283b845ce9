"""Real `ocrmesh` commands as test subprocesses, through the project's one launcher
(deploy/service_process.py): started with a ready file and a log, always stopped."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from deploy.service_process import ServiceProcess, stop_process

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ROOT", "start_command", "stop", "stopping"]

stop = stop_process  # stop(proc, grace_s=30.0): SIGTERM, wait, then SIGKILL the tree; exit status


def start_command(
    tmp: Path,
    name: str,
    argv: Sequence[str],
    extra: Sequence[str] = (),
    *,
    timeout_s: float,
) -> tuple[subprocess.Popen[bytes], dict[str, Any], Path]:
    """Run `ocrmesh ARGV EXTRA --ready-file F` from the repo root, output to a log in `tmp`, and
    wait for F; (process, what F says, log path). `name` ("ocr service") names files and errors."""
    service = ServiceProcess.in_dir(tmp, name, [*argv, *extra], cwd=ROOT)
    service.start(timeout_s)
    assert service.proc is not None
    return service.proc, service.info, service.log_file


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
