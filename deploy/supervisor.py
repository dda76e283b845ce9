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


def ocr_child(index: int, etcd: str, host: str, port: int, workers: int, device: str | None,
              data_dir: Path) -> Child:
    name = f"ocr-{index}"
    ready = data_dir / "run" / f"{name}.json"
    argv = [sys.executable, "-m", "mesh.cli", "serve", "ocr", "--host", host, "--port", str(port),
            "--instance-id", name, "--workers", str(workers), "--etcd", etcd,
            "--ready-file", str(ready)]
    if device:
        argv += ["--device", device]
    return Child(name, argv, ready, data_dir / "logs" / f"{name}.log")


async def supervise(children: list[Child], stop: asyncio.Event) -> None:
    """Restart any child that dies, with capped backoff, until `stop` is set."""
    while not stop.is_set():
        for child in children:
            if child.proc is not None and child.proc.returncode is not None and not stop.is_set():
                delay = min(30.0, 2.0 ** min(child.restarts, 5))
                console.print(f"[yellow]{child.name} exited ({child.proc.returncode}); "
                              f"restarting in {delay:.0f}s[/]")
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
    etcd = EtcdProcess(data_dir=data_dir / "etcd", host=ns.host, client_port=ns.etcd_port,
                       log_file=data_dir / "logs" / "etcd.log")
    children: list[Child] = [
        ocr_child(i + 1, etcd.endpoint, ns.host, ns.ocr_port + i, ns.workers, ns.device, data_dir)
        for i in range(ns.ocr)
    ]
    started: list[Child] = []
    try:
        console.print(f"starting etcd on {etcd.endpoint} ...")
        await etcd.start()
        for child in children:
            console.print(f"starting {child.name} (warming its engines) ...")
            await child.start()
            started.append(child)
        table = Table(title="ocrmesh is up (Ctrl-C stops everything)")
        for col in ("service", "address", "details"):
            table.add_column(col)
        table.add_row("etcd", etcd.endpoint, f"data {data_dir / 'etcd'}")
        for child in started:
            details = f"{child.info.get('execution_provider', '')}; metrics {child.info.get('metrics', '')}"
            table.add_row(child.name, child.info.get("address", "?"), details)
        console.print(table)
        exe = Path(sys.executable).parent / "ocrmesh"
        console.print(f"try:  {exe} ocr ../shared/ocr-corpus/real/rapidocr_ch_en_num.jpg "
                      f"--target {started[0].info.get('address')}")
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
    parser.add_argument("--etcd-port", type=int, default=2379, help="etcd client port")
    parser.add_argument("--data-dir", type=Path, default=Path(".ocrmesh"), help="etcd data, logs, state")


def run(ns: argparse.Namespace) -> int:
    if ns.ocr < 1:
        print("ocrmesh up: --ocr must be at least 1", file=sys.stderr)
        return 2
    return asyncio.run(up(ns))
