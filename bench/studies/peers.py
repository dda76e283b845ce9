"""`ocrmesh bench peers`: rapidocr-api vs ocrmesh (gRPC and BFF), same load, alternating, side by side."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.durations import parse_duration
from bench.http_load import HttpLoad, run_http_load
from bench.machine_facts import machine
from bench.process_rss import RssSampler
from bench.stop_signals import run_stoppable
from bench.studies.peer_server import PeerError, PeerServer, find_peer_python, peer_versions, setup_peer
from bench.studies.peers_report import PEER, comparisons, markdown, plot, pooled, verdicts
from bench.sweep import DEFAULT_IMAGE, ROOT, versions
from bench.sweep_paths import (
    PathUnavailable,
    bearer_metadata,
    bff_sessions,
    new_accounts,
    register,
    run_path_load,
)
from bench.sweep_plan import PlanError, parse_counts
from bench.sweep_report import MIB, without_details
from bench.web_session import peer_ocr_sender
from deploy.supervisor import LocalMesh, MeshPorts
from mesh.processes import free_port

PROG = "ocrmesh bench peers"
TARGETS = (PEER, "ocrmesh-grpc", "ocrmesh-bff", "ocrmesh-grpc-at-once", "ocrmesh-bff-at-once")
# (way in, whether the client waits RetryInfo / Retry-After) per ocrmesh target. The -at-once
# clients call again at once after a refusal, as ghz does; the gRPC one is a plain gRPC client
# (round_robin over the instances, no retries). rapidocr-api never refuses, so one client kind fits it.
OCRMESH_TARGETS = {
    "ocrmesh-grpc": ("direct", True),
    "ocrmesh-bff": ("bff", True),
    "ocrmesh-grpc-at-once": ("plain", False),
    "ocrmesh-bff-at-once": ("bff", False),
}
Runner = Callable[[int, float, str], Awaitable[dict[str, Any]]]

EPILOG = f"""\
examples:
  {PROG} --setup-peer                    once: a venv under .ocrmesh/ with rapidocr-api 0.2.0
  {PROG}                                 -c 1,2,4,16,64, 20s per run, 2 rounds
  {PROG} -c 2,64 --duration 10s --rounds 1 --targets {PEER},ocrmesh-grpc

Starts rapidocr-api (its default single worker) and a local ocrmesh (`ocrmesh up` layout, free
ports), then runs the same closed-loop load against each in turn at each concurrency, flipping
the order every round. Writes peers.md, peers.json and peers.png to --out.
"""


@dataclass
class PeersConfig:
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    rounds: int
    targets: tuple[str, ...]
    image: Path
    out: Path
    data_dir: Path
    ocr: int
    workers: int
    peer_python: Path | None
    progress: bool
    command: str


async def run_peers(cfg: PeersConfig, console: Console) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    python = find_peer_python(ROOT, cfg.peer_python)
    image = cfg.image.read_bytes()
    say: Callable[[str], None] = lambda text: console.print(f"[dim]{text}[/]")  # noqa: E731
    mesh = LocalMesh(
        ocr=cfg.ocr,
        auth=1,
        gateway=False,
        bff=any(OCRMESH_TARGETS.get(t, ("",))[0] == "bff" for t in cfg.targets),
        workers=cfg.workers,
        data_dir=cfg.data_dir / "mesh",
        ports=MeshPorts.ephemeral(),
        say=say,
        own_sessions=False,  # one session with the peer and the load generator: one CPU share each
    )
    reports: dict[tuple[str, int], list[dict[str, Any]]] = {}
    peaks: dict[tuple[str, int], float] = {}
    loads: dict[tuple[str, int], float] = {}  # the machine's 1-minute load average after each run
    notes = list(mesh.notes)
    async with mesh:
        account = new_accounts(1)[0]
        await register(mesh.addresses("auth")[0], account)
        peer = PeerServer(python, free_port(), cfg.data_dir / "logs" / "rapidocr-api.log")

        sessions = bff_sessions(mesh, account)

        def ocrmesh_runner(path: str, honor_retry: bool) -> Runner:
            async def run(concurrency: int, duration_s: float, name: str) -> dict[str, Any]:
                result = await run_path_load(
                    mesh,
                    path,
                    concurrency=concurrency,
                    duration_s=duration_s,
                    image=image,
                    filename=cfg.image.name,
                    metadata=await bearer_metadata(mesh, account),
                    name=name,
                    sessions=sessions,
                    honor_retry=honor_retry,
                )
                return result.report

            return run

        async def peer_run(concurrency: int, duration_s: float, name: str) -> dict[str, Any]:
            load = HttpLoad(peer.url, concurrency, duration_s, 300.0, name=name)
            return await run_http_load(load, peer_ocr_sender(peer.url, image, cfg.image.name))

        runners: dict[str, Runner] = {PEER: peer_run}
        runners.update({t: ocrmesh_runner(path, honor) for t, (path, honor) in OCRMESH_TARGETS.items()})
        targets = [t for t in TARGETS if t in cfg.targets]
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(elapsed_when_finished=True),
        )
        total = cfg.rounds * len(cfg.concurrency) * len(targets)
        try:
            with Progress(*columns, console=console, disable=not cfg.progress) as progress:
                task = progress.add_task("peers", total=total)
                for round_no in range(cfg.rounds):
                    # A fresh peer every round: its memory only grows; RSS per concurrency must be its own.
                    async with peer:
                        for target in targets:
                            progress.update(task, description=f"round {round_no + 1}: warming {target}")
                            await _run_one(runners[target], 2, cfg.warmup_s, f"{target} warm-up")
                        for c in cfg.concurrency:
                            order = targets if round_no % 2 == 0 else list(reversed(targets))
                            for target in order:
                                progress.update(task, description=f"round {round_no + 1}: {target} -c {c}")
                                pids = {PEER: peer.pid} if target == PEER else mesh.pids()
                                with RssSampler(pids) as rss:
                                    report = await _run_one(
                                        runners[target], c, cfg.duration_s, f"{target} c{c}"
                                    )
                                reports.setdefault((target, c), []).append(report)
                                peaks[(target, c)] = max(peaks.get((target, c), 0.0), rss.peak / MIB)
                                loads[(target, c)] = max(loads.get((target, c), 0.0), os.getloadavg()[0])
                                _save_raw(cfg.out, target, c, round_no, report)
                                progress.advance(task)
        finally:
            if sessions is not None:
                await sessions.close()
    table = [
        {
            "target": t,
            "concurrency": c,
            **pooled(found),
            "peak_rss_mib": peaks[(t, c)],
            "load_1m": round(loads[(t, c)], 2),
        }
        for (t, c), found in sorted(reports.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **versions(),
        "peer_versions": peer_versions(python),
        "cpus": os.cpu_count(),
        "machine": machine(),
        "image": cfg.image.name,
        "duration_s": cfg.duration_s,
        "rounds": cfg.rounds,
        "ocr": cfg.ocr,
        "workers": cfg.workers,
        "command": cfg.command,
        "notes": notes,
    }
    return table, meta


async def _run_one(runner: Runner, concurrency: int, duration_s: float, name: str) -> dict[str, Any]:
    if duration_s <= 0:
        return {}
    return await runner(concurrency, duration_s, name)


def _save_raw(out: Path, target: str, concurrency: int, round_no: int, report: dict[str, Any]) -> None:
    folder = out / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{target}-c{concurrency}-r{round_no + 1}.json"
    path.write_text(json.dumps(without_details(report), indent=1) + "\n", encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "-c", "--concurrency", default="1,2,4,16,64", help="client counts (default 1,2,4,16,64)"
    )
    parser.add_argument("-z", "--duration", default="20s", help="load per target per concurrency per round")
    parser.add_argument("--warmup", default="3s", help="unmeasured load per target at the start of a round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, target order flipped each (default 2)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"any of {','.join(TARGETS)}")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image every call sends")
    parser.add_argument(
        "--ocr", type=int, default=2, help="ocrmesh OCR instances (default 2, as `ocrmesh up`)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes per OCR instance (default 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default docs/benchmarks/peers-DATE)"
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".ocrmesh/peers"), help="mesh data and logs")
    parser.add_argument("--peer-python", type=Path, default=None, help="a Python with rapidocr-api installed")
    parser.add_argument("--setup-peer", action="store_true", help=f"install {PEER} into .ocrmesh/peers-venv")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild peers.md and peers.png from --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display")


def _config(ns: argparse.Namespace) -> PeersConfig:
    try:
        duration_s, warmup_s = parse_duration(ns.duration), parse_duration(ns.warmup)
    except ValueError as exc:
        raise PlanError(f"--duration/--warmup: {exc}") from None
    targets = tuple(t.strip() for t in ns.targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise PlanError(f"--targets {ns.targets!r}: choose from {','.join(TARGETS)}")
    if ns.rounds < 1 or duration_s <= 0:
        raise PlanError("--rounds must be at least 1 and --duration above 0")
    return PeersConfig(
        concurrency=parse_counts(ns.concurrency, "--concurrency"),
        duration_s=duration_s,
        warmup_s=warmup_s,
        rounds=ns.rounds,
        targets=targets,
        image=ns.image,
        out=ns.out or ROOT / "docs" / "benchmarks" / f"peers-{dt.date.today().isoformat()}",
        data_dir=ns.data_dir.resolve(),
        ocr=ns.ocr,
        workers=ns.workers,
        peer_python=ns.peer_python,
        progress=not ns.no_progress,
        command="ocrmesh " + shlex.join(sys.argv[1:]),
    )


def write(out: Path, table: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(
        json.dumps({"meta": meta, "rows": table, "ratios": comparisons(table)}, indent=1) + "\n",
        encoding="utf-8",
    )
    png = plot(
        table, out / "peers.png", f"ocrmesh vs {PEER}, {meta.get('date', '')}, {meta.get('image', '')}"
    )
    md = out / "peers.md"
    md.write_text(markdown(table, meta, png.name), encoding="utf-8")
    return md


def run(ns: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if ns.setup_peer:
        try:
            python = setup_peer(ROOT)
        except PeerError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        print(f"{PEER} ready in {python}")
        return 0
    try:
        cfg = _config(ns)
    except PlanError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if ns.report_only:
        saved = json.loads((cfg.out / "peers.json").read_text(encoding="utf-8"))
        console.print(f"report: {write(cfg.out, saved['rows'], saved['meta'])}")
        return 0
    if not cfg.image.is_file():
        print(f"{PROG}: no such image: {cfg.image} (pass --image PATH)", file=sys.stderr)
        return 2
    began = time.monotonic()
    try:
        table, meta = run_stoppable(run_peers(cfg, console))
    except (PeerError, PathUnavailable, RuntimeError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    meta["elapsed_s"] = time.monotonic() - began
    md = write(cfg.out, table, meta)
    summary = Table(title=f"ocrmesh vs {PEER}")
    for col in ("clients", "target", "OK/s", "p95 OK s", "other failures", "peak RSS MiB"):
        summary.add_column(col)
    for r in table:
        summary.add_row(
            str(r["concurrency"]),
            r["target"],
            f"{r['ok_per_s']:.2f}",
            f"{r['p95_ok_ms'] / 1e3:.2f}",
            str(r["other_failures"]),
            f"{r['peak_rss_mib']:.0f}",
        )
    console.print(summary)
    for what, ok, figures in verdicts(comparisons(table)):
        console.print(f"{'[green]PASS' if ok else '[red]FAIL'}[/] {what}: {figures}")
    console.print(f"report: {md}")
    return 0
