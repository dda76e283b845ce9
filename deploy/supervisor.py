"""`ocrmesh up`: run etcd and the services locally, wait until each is ready, print where they are."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from etcd.launcher import EtcdProcess

console = Console(stderr=False)


@dataclass
class Child:
    """One supervised service process, started from `argv`, ready once it writes `ready_file`."""

    name: str
    argv: list[str]
    ready_file: Path
    log_file: Path
    proc: asyncio.subprocess.Process | None = None
    info: dict[str, str] = field(default_factory=dict)
    restarts: int = 0

    async def start(self, timeout_s: float = 300.0) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_file}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_file}")
            await asyncio.sleep(0.2)
        self.info = json.loads(self.ready_file.read_text())

    async def stop(self, grace_s: float = 30.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def ocr_child(
    index: int,
    etcd: str,
    host: str,
    port: int,
    workers: int,
    device: str | None,
    data_dir: Path,
    require_auth: bool = False,
) -> Child:
    name = f"ocr-{index}"
    ready = data_dir / "run" / f"{name}.json"
    argv = [
        sys.executable,
        "-m",
        "mesh.cli",
        "serve",
        "ocr",
        "--host",
        host,
        "--port",
        str(port),
        "--instance-id",
        name,
        "--workers",
        str(workers),
        "--etcd",
        etcd,
        "--ready-file",
        str(ready),
    ]
    if device:
        argv += ["--device", device]
    if require_auth:
        argv.append("--require-auth")
    return Child(name, argv, ready, data_dir / "logs" / f"{name}.log")


def auth_child(index: int, etcd: str, host: str, port: int, data_dir: Path) -> Child:
    """An auth instance; all of them share one SQLite file (and so one user table and key set)."""
    name = f"auth-{index}"
    ready = data_dir / "run" / f"{name}.json"
    db = f"sqlite+aiosqlite:///{(data_dir / 'auth.db').resolve()}"
    argv = [
        sys.executable,
        "-m",
        "mesh.cli",
        "serve",
        "auth",
        "--host",
        host,
        "--port",
        str(port),
        "--instance-id",
        name,
        "--etcd",
        etcd,
        "--db",
        db,
        "--ready-file",
        str(ready),
    ]
    return Child(name, argv, ready, data_dir / "logs" / f"{name}.log")


def auth_ports(first: int, count: int) -> list[int]:
    """Auth ports count down from `first` (50050, 50049, ...), away from OCR's ports counting up."""
    return [first - i for i in range(count)]


def port_clash(ns: argparse.Namespace) -> str | None:
    """Why the requested ports cannot all be used, or None."""
    taken: dict[int, str] = {ns.etcd_port: "etcd"}
    wanted = [(p, f"ocr-{i + 1}") for i, p in enumerate(range(ns.ocr_port, ns.ocr_port + ns.ocr))]
    if not ns.no_auth:
        wanted += [(p, f"auth-{i + 1}") for i, p in enumerate(auth_ports(ns.auth_port, ns.auth))]
    for port, name in wanted:
        if not 0 < port < 65536:
            return f"{name} would get port {port}"
        if port in taken:
            return f"{name} and {taken[port]} would both use port {port}; change --ocr-port or --auth-port"
        taken[port] = name
    return None


async def supervise(children: list[Child], stop: asyncio.Event) -> None:
    """Restart any child that dies, with capped backoff, until `stop` is set."""
    while not stop.is_set():
        for child in children:
            if child.proc is not None and child.proc.returncode is not None and not stop.is_set():
                delay = min(30.0, 2.0 ** min(child.restarts, 5))
                console.print(
                    f"[yellow]{child.name} exited ({child.proc.returncode}); restarting in {delay:.0f}s[/]"
                )
                await asyncio.sleep(delay)
                child.restarts += 1
                try:
                    await child.start()
                    console.print(f"[green]{child.name} is back on {child.info.get('address')}[/]")
                except RuntimeError as exc:
                    console.print(f"[red]{exc}[/]")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def up(ns: argparse.Namespace) -> int:
    data_dir: Path = ns.data_dir
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    etcd = EtcdProcess(
        data_dir=data_dir / "etcd",
        host=ns.host,
        client_port=ns.etcd_port,
        log_file=data_dir / "logs" / "etcd.log",
    )
    auth_on = not ns.no_auth
    children: list[Child] = []
    if auth_on:
        children += [
            auth_child(i + 1, etcd.endpoint, ns.host, port, data_dir)
            for i, port in enumerate(auth_ports(ns.auth_port, ns.auth))
        ]
    children += [
        ocr_child(
            i + 1,
            etcd.endpoint,
            ns.host,
            ns.ocr_port + i,
            ns.workers,
            ns.device,
            data_dir,
            require_auth=auth_on,
        )
        for i in range(ns.ocr)
    ]
    started: list[Child] = []
    try:
        console.print(f"starting etcd on {etcd.endpoint} ...")
        await etcd.start()
        for child in children:
            what = (
                "opening its database, publishing its keys"
                if child.name.startswith("auth")
                else ("warming its engines")
            )
            console.print(f"starting {child.name} ({what}) ...")
            await child.start()
            started.append(child)
        table = Table(title="ocrmesh is up (Ctrl-C stops everything)")
        for col in ("service", "address", "details"):
            table.add_column(col)
        table.add_row("etcd", etcd.endpoint, f"data {data_dir / 'etcd'}")
        for child in started:
            metrics = f"metrics {child.info.get('metrics', '')}"
            if child.name.startswith("auth"):
                details = f"SQLite {data_dir / 'auth.db'}; {metrics}"
            else:
                details = f"{child.info.get('execution_provider', '')}; {metrics}"
                if auth_on:
                    details += "; tokens required"
            table.add_row(child.name, child.info.get("address", "?"), details)
        console.print(table)
        exe = Path(sys.executable).parent / "ocrmesh"
        ocr_address = next(c.info.get("address") for c in started if c.name.startswith("ocr"))
        image = "../shared/ocr-corpus/real/rapidocr_ch_en_num.jpg"
        if auth_on:
            auth_address = next(c.info.get("address") for c in started if c.name.startswith("auth"))
            account = f"{exe} account --auth-target {auth_address}"
            console.print(f"auth: {auth_address} (OCR calls need an access token)")
            console.print(f"try:  {account} register alice")
            console.print(
                f"      {exe} ocr {image} --target {ocr_address} --login alice --auth-target {auth_address}"
            )
            console.print(f"      or: export OCRMESH_TOKEN=$({account} login alice)")
        else:
            console.print(f"try:  {exe} ocr {image} --target {ocr_address}")
        console.print(f"      {exe} status --etcd {etcd.endpoint}")
        console.print(f"logs: {data_dir / 'logs'}")
        await supervise(started, stop)
        return 0
    except RuntimeError as exc:
        console.print(f"[red]ocrmesh up: {exc}[/]")
        return 1
    finally:
        console.print("stopping ...")
        for child in reversed(started):
            await child.stop()
        await etcd.stop()
        console.print("stopped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ocr", type=int, default=2, help="OCR instances to run")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per OCR instance")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="OCR device")
    parser.add_argument("--host", default="127.0.0.1", help="address every service listens on")
    parser.add_argument("--ocr-port", type=int, default=50051, help="first OCR port (then +1, +2 ...)")
    parser.add_argument("--auth", type=int, default=1, help="auth instances to run (they share one database)")
    parser.add_argument(
        "--auth-port",
        type=int,
        default=50050,
        help="first auth port (then -1, -2 ..., away from the OCR ports)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="run no auth service; OCR then takes calls without a token"
    )
    parser.add_argument("--etcd-port", type=int, default=2379, help="etcd client port")
    parser.add_argument("--data-dir", type=Path, default=Path(".ocrmesh"), help="etcd data, logs, state")


def run(ns: argparse.Namespace) -> int:
    if ns.ocr < 1:
        print("ocrmesh up: --ocr must be at least 1", file=sys.stderr)
        return 2
    if ns.auth < 1 and not ns.no_auth:
        print("ocrmesh up: --auth must be at least 1 (or pass --no-auth)", file=sys.stderr)
        return 2
    clash = port_clash(ns)
    if clash:
        print(f"ocrmesh up: {clash}", file=sys.stderr)
        return 2
    return asyncio.run(up(ns))
