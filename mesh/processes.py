"""Helpers for the processes the mesh starts: a free port to give one, and killing a whole tree."""

from __future__ import annotations

import contextlib
import socket

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (for children that cannot listen on port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (for children not in a process group of their own)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
