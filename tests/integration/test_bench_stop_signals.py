"""SIGTERM stops a benchmark as Ctrl-C does: what it started is stopped before it exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

# A stand-in benchmark: starts a child process (as a bench starts a mesh) and stops it on the way out.
SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from bench.stop_signals import run_stoppable

    async def main():
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(120)")
        print(child.pid, flush=True)
        try:
            await asyncio.sleep(120)
        finally:
            child.kill()
            await child.wait()
            print("stopped the child", flush=True)

    try:
        run_stoppable(main())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


def test_sigterm_cancels_the_bench_so_its_children_are_stopped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert psutil.pid_exists(child)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert out.split() == ["stopped", "the", "child", "interrupted"]
    assert not psutil.pid_exists(child)
