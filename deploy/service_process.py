"""One `ocrmesh` command as a child process: ready once it writes its ready file, stopped gracefully.

The one launcher behind `ocrmesh up` (deploy/supervisor.py), the integration tests and the
benchmarks. A child is started with `--ready-file F` and its output in a log; it is ready when F
appears (every `ocrmesh serve` writes it after warm-up), and what F says is kept in `info`. Stopping
sends SIGTERM, waits up to a grace period, then SIGKILLs whatever is left of the process tree.
Waiting has a blocking form (tests) and an asyncio form (the supervisor, benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mesh.processes import kill_tree

POLL_S = 0.05


class NotReadyError(RuntimeError):
    """The child exited, or did not write its ready file in time; the message quotes its log."""


def ocrmesh_argv(*args: str) -> list[str]:
    """The command line that runs `ocrmesh ARGS` with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "cli", *args]


@dataclass
class ServiceProcess:
    """`ocrmesh ARGV --ready-file READY_FILE` run as a child, its output appended to `log_file`."""

    name: str
    argv: list[str]  # what follows `ocrmesh`, e.g. ["serve", "ocr", "--port", "0"]
    ready_file: Path
    log_file: Path
    # Its own session (and process group): Ctrl-C in the terminal reaches only the supervisor, which
    # stops children in order. Tests and benchmarks keep children in their session instead: Linux
    # autogroup scheduling shares CPU per session, so N children in N sessions would get N shares.
    own_session: bool = False
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def in_dir(cls, workdir: Path, name: str, argv: Sequence[str], **kwargs: Any) -> ServiceProcess:
        """A child whose ready file and log live in `workdir`, named after `name` and a fresh stamp."""
        stamp = time.monotonic_ns()
        prefix = name.split()[0]
        return cls(
            name,
            list(argv),
            workdir / f"{prefix}-ready-{stamp}.json",
            workdir / f"{prefix}-{stamp}.log",
            **kwargs,
        )

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited, else None."""
        return None if self.proc is None else self.proc.poll()

    def spawn(self) -> None:
        """Start the child (it is not ready yet: wait for that with `wait_ready`)."""
        self.ready_file.unlink(missing_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**(self.env if self.env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*ocrmesh_argv(*self.argv), "--ready-file", str(self.ready_file)],
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=self.own_session,
            )

    def _check(self, deadline: float, timeout_s: float) -> bool:
        """True once ready (and `info` read); raises NotReadyError if the child exited or time ran out."""
        if self.ready_file.exists():
            self.info = json.loads(self.ready_file.read_text())
            return True
        code = self.returncode
        if code is not None:
            raise NotReadyError(f"{self.name} exited with {code}; see {self.log_file}:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise NotReadyError(
                f"{self.name} not ready after {timeout_s:g} s; see {self.log_file}:\n{self.log_tail()}"
            )
        return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the child's log (what an error should show)."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Block until the ready file appears; its content. A child that fails to get ready is stopped."""
        deadline = time.monotonic() + timeout_s
        try:
            while not self._check(deadline, timeout_s):
                time.sleep(POLL_S)
        except BaseException:
            self.stop(grace_s=5.0)
            raise
        return self.info

    async def wait_ready_async(self, timeout_s: float) -> dict[str, Any]:
        """`wait_ready` for asyncio callers."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._check(deadline, timeout_s):
                    break
                await asyncio.sleep(POLL_S)
        except BaseException:
            await self.stop_async(grace_s=5.0)
            raise
        return self.info

    def start(self, timeout_s: float) -> dict[str, Any]:
        """spawn + wait_ready."""
        self.spawn()
        return self.wait_ready(timeout_s)

    async def start_async(self, timeout_s: float) -> dict[str, Any]:
        """spawn + wait_ready_async."""
        self.spawn()
        return await self.wait_ready_async(timeout_s)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL the tree; the exit status (None if never started)."""
        return None if self.proc is None else stop_process(self.proc, grace_s, own_session=self.own_session)

    async def stop_async(self, grace_s: float = 30.0) -> int | None:
        """`stop` for asyncio callers (waits in a thread instead of blocking the loop)."""
        if self.proc is None:
            return None
        return await asyncio.to_thread(stop_process, self.proc, grace_s, own_session=self.own_session)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30.0, *, own_session: bool = False) -> int:
    """SIGTERM `proc`, wait up to `grace_s`, then SIGKILL what is left of its tree (its process
    group too when it leads one); descendants it leaves behind are killed either way. Its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        children: list[psutil.Process] = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        # Still running (so not reaped): its pid and process group are still its own.
        if own_session:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        kill_tree(proc.pid)
        proc.wait(10)
    _kill_saved(children)  # workers the child left behind, if any
    return proc.returncode


def _kill_saved(children: list[psutil.Process]) -> None:
    """SIGKILL processes saved earlier (psutil checks each is still the same process)."""
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


@contextlib.contextmanager
def running(service: ServiceProcess, timeout_s: float, grace_s: float = 30.0) -> Iterator[ServiceProcess]:
    """`with running(ServiceProcess(...), timeout_s) as svc:` starts it ready and always stops it."""
    service.start(timeout_s)
    try:
        yield service
    finally:
        service.stop(grace_s)


@contextlib.asynccontextmanager
async def running_async(
    service: ServiceProcess, timeout_s: float, grace_s: float = 30.0
) -> AsyncIterator[ServiceProcess]:
    """`running` for asyncio callers."""
    await service.start_async(timeout_s)
    try:
        yield service
    finally:
        await service.stop_async(grace_s)
