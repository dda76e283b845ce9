"""The etcd launcher: start, health, crash and restart on the same ports, pause, serve."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aetcd
import pytest

from etcd.launcher import EtcdConfig, EtcdError, EtcdProcess, find_etcd, http_get
from mesh import config as mesh_config
from mesh.processes import free_port
from tests.integration.etcd_fixtures import eventually, make_etcd

REPO = Path(__file__).resolve().parents[2]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_find_etcd_prefers_a_real_binary() -> None:
    path = find_etcd()
    assert os.access(path, os.X_OK)
    with open(path, "rb") as handle:
        assert handle.read(4) == b"\x7fELF"
    with pytest.raises(EtcdError):
        find_etcd("/nonexistent/etcd")


async def test_start_answers_and_stop_leaves_no_process(tmp_path: Path) -> None:
    proc = make_etcd(tmp_path)
    async with proc:
        assert proc.running and proc.endpoint == f"127.0.0.1:{proc.client_port}"
        assert proc.url == f"http://{proc.endpoint}"
        status, body = await http_get(proc.host, proc.client_port, "/health", 2)
        assert status == 200 and b'"true"' in body
        pid = proc.pid
        assert pid is not None
        cmd = proc.command()
        assert "--quota-backend-bytes" in cmd and "--auto-compaction-mode" in cmd
        assert (tmp_path / "etcd" / "member").is_dir()
    assert not proc.running
    assert not pid_alive(pid)


async def test_kill_and_restart_keeps_ports_and_data(tmp_path: Path) -> None:
    async with make_etcd(tmp_path) as proc:
        ports = (proc.client_port, proc.peer_port)
        client = aetcd.Client(host=proc.host, port=proc.client_port, timeout=1)
        try:
            await client.put(b"/k", b"v")
            old_pid = proc.pid
            await proc.kill()
            assert not proc.running
            with pytest.raises(aetcd.ConnectionFailedError):
                await asyncio.wait_for(client.get(b"/k"), 2)
            await proc.restart()
            assert (proc.client_port, proc.peer_port) == ports and proc.pid != old_pid

            async def back() -> bool:
                try:
                    got = await asyncio.wait_for(client.get(b"/k"), 1)
                except (aetcd.ClientError, TimeoutError):
                    return False
                return got is not None and got.value == b"v"

            await eventually(back, 5)
        finally:
            await client.close()


async def test_pause_freezes_and_stop_works_while_paused(tmp_path: Path) -> None:
    proc = make_etcd(tmp_path)
    async with proc:
        client = aetcd.Client(host=proc.host, port=proc.client_port, timeout=1)
        try:
            await client.put(b"/k", b"v")
            proc.pause()
            assert proc.paused
            started = time.monotonic()
            with pytest.raises((aetcd.ConnectionTimeoutError, TimeoutError)):
                await asyncio.wait_for(client.get(b"/k"), 0.5)
            assert time.monotonic() - started < 1.5
            proc.resume()
            got = await asyncio.wait_for(client.get(b"/k"), 2)
            assert got is not None and got.value == b"v"
            proc.pause()
        finally:
            await client.close()
        pid = proc.pid
    # stop() resumed the frozen process so that SIGTERM could act.
    assert pid is not None and not pid_alive(pid)
    assert not proc.paused


async def test_start_failure_is_reported_and_leaves_no_process(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = EtcdProcess(
            tmp_path / "etcd",
            client_port=port,
            peer_port=free_port(),
            election_timeout_ms=100,
            heartbeat_ms=10,
            start_timeout=10,
        )
        with pytest.raises(EtcdError, match=r"exited|not healthy"):
            await proc.start()
        assert not proc.running


async def test_picked_ports_taken_before_the_first_start_are_replaced(tmp_path: Path) -> None:
    proc = make_etcd(tmp_path)
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", proc.client_port))
        thief.listen()
        stolen = proc.client_port
        async with proc:
            assert proc.client_port != stolen and proc.running
            ports = (proc.client_port, proc.peer_port)
            await proc.restart()
            assert (proc.client_port, proc.peer_port) == ports


def test_config_defaults_and_env() -> None:
    cfg = mesh_config.load(EtcdConfig, {}, environ={})
    assert (cfg.data_dir, cfg.client_port, cfg.peer_port, cfg.host) == (
        Path(".ocrmesh/etcd"),
        2379,
        2380,
        "127.0.0.1",
    )
    cfg = mesh_config.load(EtcdConfig, {"peer_port": "2481"}, environ={"OCRMESH_ETCD_CLIENT_PORT": "2480"})
    assert (cfg.client_port, cfg.peer_port) == (2480, 2481)
    with pytest.raises(mesh_config.ConfigError):
        mesh_config.load(EtcdConfig, {"client_port": "2380"}, environ={})


async def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    client_port, peer_port = free_port(), free_port()
    code = (
        "import argparse, sys\n"
        "from etcd import launcher\n"
        "p = argparse.ArgumentParser()\n"
        "launcher.add_arguments(p)\n"
        "sys.exit(launcher.run(p.parse_args(sys.argv[1:])))\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--data-dir",
        str(tmp_path / "served"),
        "--client-port",
        str(client_port),
        "--peer-port",
        str(peer_port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
    )
    try:

        async def healthy() -> bool:
            try:
                status, _ = await http_get("127.0.0.1", client_port, "/health", 1)
            except (OSError, TimeoutError):
                return False
            return status == 200

        await eventually(healthy, 15, interval=0.1)
        child.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.wait(), 15) == 0

        async def port_closed() -> bool:
            return not await healthy()

        await eventually(port_closed, 5)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_etcd_never_outlives_a_killed_launcher(tmp_path: Path) -> None:
    """SIGKILL gives the launcher no chance to stop etcd; the parent-death signal still does."""
    client_port, peer_port = free_port(), free_port()
    code = (
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from etcd.launcher import EtcdProcess\n"
        "async def main():\n"
        "    proc = EtcdProcess(data_dir=Path(sys.argv[1]), client_port=int(sys.argv[2]),"
        " peer_port=int(sys.argv[3]))\n"
        "    await proc.start()\n"
        "    print(proc.pid, flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        str(tmp_path / "orphan"),
        str(client_port),
        str(peer_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 60)
    etcd_pid = int(line)
    assert pid_alive(etcd_pid)
    child.kill()
    await child.wait()

    async def gone() -> bool:
        return not pid_alive(etcd_pid)

    await eventually(gone, 15, interval=0.1)
