"""The one launcher (deploy/service_process.py): ready file read, failures explained, trees stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from deploy.service_process import NotReadyError, ServiceProcess, running_async, stop_process
from tests.integration.service_process import ROOT

AUTH = ["serve", "auth", "--port", "0", "--metrics-port", "-1", "--bcrypt-cost", "4", "--grace-s", "1"]


async def test_a_child_is_ready_when_its_ready_file_appears_and_exits_0_on_stop(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    child = ServiceProcess.in_dir(tmp_path, "auth", [*AUTH, "--db", db], cwd=ROOT)
    async with running_async(child, timeout_s=60, grace_s=20):
        assert child.pid is not None
        assert child.info["address"].startswith("127.0.0.1:")
        assert child.returncode is None
    assert child.returncode == 0, child.log_tail()
    assert child.pid is None


def test_a_child_that_exits_raises_with_its_log(tmp_path: Path) -> None:
    child = ServiceProcess.in_dir(tmp_path, "auth", ["serve", "auth", "--port", "not-a-port"], cwd=ROOT)
    with pytest.raises(NotReadyError, match=r"auth exited with 2; see .*auth-\d+\.log") as raised:
        child.start(timeout_s=60)
    assert "not-a-port" in str(raised.value)  # argparse's message, quoted from the log
    assert not child.ready_file.exists()


def test_a_child_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    # An OCR instance loads and warms its models for seconds before writing its ready file.
    argv = ["serve", "ocr", "--port", "0", "--metrics-port", "-1", "--workers", "1"]
    child = ServiceProcess.in_dir(tmp_path, "stuck", argv, cwd=ROOT)
    with pytest.raises(NotReadyError, match=r"stuck not ready after 0\.5 s"):
        child.start(timeout_s=0.5)
    assert child.returncode is not None  # stopped, not left running


def test_stop_kills_a_tree_that_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    deadline = time.monotonic() + 10
    while not psutil.Process(proc.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = psutil.Process(proc.pid).children()[0]
    assert stop_process(proc, grace_s=0.5) == -9
    grandchild.wait(5)  # raises TimeoutExpired if it still ran
    assert not grandchild.is_running()
