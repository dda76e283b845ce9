"""The peer HTTP OCR server, rapidocr-api 0.2.0, as a child process: found or set up, started, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from mesh.processes import kill_tree

PEER = "rapidocr-api"
PEER_VERSION = "0.2.0"
# Started the way its console script does it; `main()` parses -ip/-p/-workers (default 1 worker).
LAUNCH = "import sys; from rapidocr_api.main import main; sys.argv[0] = 'rapidocr_api'; main()"


class PeerError(RuntimeError):
    """The peer cannot be found, set up or started; the message says what to run."""


def peer_venv(root: Path) -> Path:
    return root / ".ocrmesh" / "peers-venv"


def _has_peer(python: Path) -> bool:
    # Importing rapidocr_api.main builds its engine, so only look the modules up.
    probe = (
        "import importlib.util as u, sys; "
        "sys.exit(0 if u.find_spec('rapidocr_api') and u.find_spec('onnxruntime') else 1)"
    )
    return python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def find_peer_python(root: Path, explicit: Path | None = None) -> Path:
    """The Python that runs the peer: --peer-python, else this env when it has rapidocr-api, else the
    bench's own venv (.ocrmesh/peers-venv, made by --setup-peer)."""
    if explicit is not None:
        if not _has_peer(explicit):
            raise PeerError(f"{explicit} cannot import rapidocr_api and onnxruntime; install {PEER} there")
        return explicit
    if importlib.util.find_spec("rapidocr_api") is not None:
        return Path(sys.executable)
    venv_python = peer_venv(root) / "bin" / "python"
    if _has_peer(venv_python):
        return venv_python
    raise PeerError(
        f"{PEER} is not installed: run `ocrmesh bench peers --setup-peer` (makes {peer_venv(root)} with "
        f"{PEER}=={PEER_VERSION} and onnxruntime) or pass --peer-python"
    )


def setup_peer(root: Path) -> Path:
    """Make .ocrmesh/peers-venv with rapidocr-api and our onnxruntime version, with pip.

    Its own venv because its uvicorn[standard] adds uvloop and httptools, which would change how
    our BFF's uvicorn runs in the main venv. rapidocr-api declares no inference engine, so
    onnxruntime (the version ocrmesh uses) is added.
    """
    venv = peer_venv(root)
    try:
        ort = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        ort = ""
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{PEER}=={PEER_VERSION}",
         f"onnxruntime=={ort}" if ort else "onnxruntime"],
    ]  # fmt: skip
    for step in steps:
        if subprocess.run(step).returncode != 0:
            raise PeerError(f"setting up {venv} failed at: {' '.join(step)}")
    return venv / "bin" / "python"


def peer_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d: m.version(d) for d in ('rapidocr-api', 'rapidocr', 'onnxruntime', 'uvicorn')}))"
    )
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    try:
        return dict(json.loads(found.stdout))
    except ValueError:
        return {}


class PeerServer:
    """rapidocr-api on 127.0.0.1:`port` with its default single worker; `async with` waits until
    GET / answers and stops it (SIGTERM, then SIGKILL) on exit. It stays in the bench's session, as
    the mesh does in benchmarks, so autogroup scheduling gives neither side more CPU shares."""

    def __init__(self, python: Path, port: int, log_file: Path, start_timeout_s: float = 180.0) -> None:
        self.python, self.port, self.log_file = python, port, log_file
        self.start_timeout_s = start_timeout_s
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocr"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> PeerServer:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.python), "-c", LAUNCH, "-ip", "127.0.0.1", "-p", str(self.port),
                stdout=log, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + self.start_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc.returncode is not None:
                    raise PeerError(f"{PEER} exited with {self.proc.returncode}; see {self.log_file}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.port}/")).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    await self.stop()
                    raise PeerError(
                        f"{PEER} not answering after {self.start_timeout_s:.0f}s; see {self.log_file}"
                    )
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            kill_tree(proc.pid)
            await proc.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
