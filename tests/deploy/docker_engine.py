"""A private Docker engine for the deploy test: its own dockerd, data and socket in a temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
BRIDGE = Path("/sys/class/net/docker0")  # the default bridge dockerd makes, and leaves behind


class EngineError(RuntimeError):
    """A docker or compose command failed; the message carries its output."""


@dataclass
class Engine:
    """A running dockerd and the environment that points a docker CLI (and compose) at it."""

    root: Path
    docker: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    leftovers: list[str] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        timeout: float,
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with this engine's environment; output captured (stdout and stderr)."""
        try:
            done = subprocess.run(
                list(argv),
                env={**self.env, **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"{' '.join(argv)}: no answer in {timeout:.0f} s\n{exc.output!r}") from exc
        if check and done.returncode != 0:
            raise EngineError(
                f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return done

    def docker_cmd(self, *args: str, timeout: float = 120.0) -> str:
        return self.run([self.docker, *args], timeout).stdout

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "dockerd.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every process whose command line contains `text`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found[int(entry.name)] = cmdline.strip()
    return found


@contextmanager
def private_engine(dockerd: str, docker: str, compose_plugin: str | None = None) -> Iterator[Engine]:
    """Start dockerd with data and exec roots and its socket in a new temp dir, yield it, then
    stop it (SIGTERM, then SIGKILL), kill whatever of it is left by pid (recorded in `leftovers`),
    remove the dir and the docker0 bridge if it made one. Nothing else on the host is touched."""
    bridge_before = BRIDGE.exists()
    root = Path(tempfile.mkdtemp(prefix="ocrmesh-dockerd-"))
    sock = root / "docker.sock"
    config = root / "config"
    if compose_plugin:
        (config / "cli-plugins").mkdir(parents=True)
        (config / "cli-plugins" / "docker-compose").symlink_to(compose_plugin)
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{sock}",
        "DOCKER_BUILDKIT": "1",
        "DOCKER_CONFIG": str(config),
    }
    with (root / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                dockerd,
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--host",
                f"unix://{sock}",
                "--pidfile",
                str(root / "dockerd.pid"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = Engine(root=root, docker=docker, env=env, process=process)
    try:
        _wait_ready(engine)
        yield engine
    finally:
        _stop(engine)
        if not bridge_before and BRIDGE.exists():
            subprocess.run(["ip", "link", "delete", "docker0"], check=False, capture_output=True)


def _wait_ready(engine: Engine) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            raise EngineError(f"dockerd exited with {engine.process.returncode}:\n{engine.log_tail()}")
        if engine.run([engine.docker, "version"], 10, check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise EngineError(f"dockerd not ready in {START_TIMEOUT_S:.0f} s:\n{engine.log_tail()}")


def _stop(engine: Engine) -> None:
    if engine.process.poll() is None:
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(10)
    # containerd and its shims name the exec root on their command lines.
    for pid, cmdline in processes_mentioning(str(engine.root)).items():
        engine.leftovers.append(cmdline)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for mount in _mounts_under(engine.root):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(engine.root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    """Mount points below `root` (deepest first), e.g. overlay layers a killed engine left."""
    points = []
    for line in Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[1].startswith(str(root) + "/"):
            points.append(parts[1])
    return sorted(points, key=len, reverse=True)
