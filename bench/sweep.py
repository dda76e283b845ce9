"""`ocrmesh bench sweep`: the course experiment matrix on a local mesh, resumable, with a report."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.durations import parse_duration
from bench.machine_facts import machine
from bench.process_cpu import CpuMeter, CpuUse
from bench.process_rss import RssSampler
from bench.stop_signals import run_stoppable
from bench.sweep_metrics import scrape_all, server_summary
from bench.sweep_paths import (
    Account,
    PathUnavailable,
    bearer_metadata,
    bff_sessions,
    new_accounts,
    register,
    run_path_load,
)
from bench.sweep_plan import (
    CellRound,
    PlanError,
    Settings,
    cell_file,
    estimate_remaining_s,
    image_digest,
    parse_counts,
    parse_mix,
    parse_paths,
    pending,
    plan,
    record_round,
    recorded,
    schedule,
)
from bench.sweep_report import MIB, load_records, summarize, without_details, write_report
from bench.web_session import BffSessions
from deploy.supervisor import LocalMesh, MeshPorts
from mesh import __version__

PROG = "ocrmesh bench sweep"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "ocr-corpus" / "real" / "rapidocr_ch_en_num.jpg"
MIX_USERS = 8
CELL_OVERHEAD_S = 4.0  # login, scrapes, writing the record: a first guess until cells are measured
MESH_START_GUESS_S = 30.0

EPILOG = f"""\
examples:
  {PROG}        the default: --ocr 1,2 --auth 1 --concurrency 1,4,16,64 --path direct,gateway
  {PROG} --ocr 1,2 --auth 1,2 --concurrency 1,2,4,8,16,32,64 --duration 20s --path direct,gateway,bff
  {PROG} --mix login=1,ocr=9 --ocr 2 --concurrency 4,16
  {PROG} --ocr 1,2 --concurrency 4,16,64 --rounds 3     each cell 3 times, side by side
  {PROG} --report-only --out docs/benchmarks/sweep-2026-11-25     rebuild the report from recorded cells

Each mesh (OCR x auth instances) is started once on free loopback ports (a running `make up` is
not touched), every cell on it is warmed up and measured, then the mesh is stopped. Cells already
recorded in --out with the same image, duration, warm-up, workers and mix are skipped: run the
same command again to resume. Paths whose way in is not in this build yet (gateway, bff) are
skipped with a note and stay pending.

--rounds N measures every cell of a mesh N times, round by round on the same running mesh: round 1
in plan order (rising concurrency), round 2 reversed, round 3 as round 1, ... so load that drifts
during a round and a cell's place in it weigh on every cell alike. Each (cell, round) is its own
file (round 1 keeps the one-round name, KEY.json; round N is KEY.rN.json), so rerunning with a
higher --rounds adds rounds to a recorded sweep. The report gives each cell's median over rounds
with min-max, and the OK/s of each cell relative to the 4-client cell of its mesh and path, taken
within each round (paired), then the median and min-max over rounds.
"""


@dataclass
class SweepConfig:
    """One sweep's inputs, parsed and checked."""

    ocr: tuple[int, ...]
    auth: tuple[int, ...]
    paths: tuple[str, ...]
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    image: Path
    out: Path
    data_dir: Path
    workers: int = 1
    mix: dict[str, int] = field(default_factory=dict)
    rounds: int = 1
    progress: bool = True
    command: str = ""

    def settings(self, image: bytes) -> Settings:
        return Settings(
            image_sha256=image_digest(image),
            duration_s=self.duration_s,
            warmup_s=self.warmup_s,
            workers=self.workers,
            mix=tuple(sorted(self.mix.items())),
        )


@dataclass
class Pace:
    """Measured times, for the ETA: seconds per cell and per mesh start."""

    cells: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)

    def cell_s(self, guess: float) -> float:
        return sum(self.cells) / len(self.cells) if self.cells else guess

    def start_s(self) -> float:
        return sum(self.starts) / len(self.starts) if self.starts else MESH_START_GUESS_S


def versions() -> dict[str, str]:
    found = {"ocrmesh": __version__, "python": platform.python_version()}
    for dist in ("onnxruntime", "rapidocr", "grpcio"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def meta(config: SweepConfig, elapsed_s: float, notes: Sequence[str]) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **versions(),
        "cpus": psutil.cpu_count(),
        "machine": machine(),
        "image": config.image.name,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "workers": config.workers,
        "mix": config.mix,
        "mix_users": MIX_USERS if config.mix.get("login") else 0,
        "rounds": config.rounds,
        "matrix": {
            "ocr": list(config.ocr),
            "auth": list(config.auth),
            "path": list(config.paths),
            "concurrency": list(config.concurrency),
        },
        "command": config.command,
        "elapsed_s": elapsed_s,
        "notes": list(notes),
    }


class Sweep:
    """Runs the pending (cell, round)s mesh by mesh, recording each as soon as it is measured."""

    def __init__(self, config: SweepConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.image = config.image.read_bytes()
        self.settings = config.settings(self.image)
        self.notes: list[str] = []
        self.pace = Pace()
        self.todo: list[CellRound] = []
        self.running_mesh: tuple[int, int] | None = None
        self.resumed = False
        self.cell_started = 0.0
        self.mesh_started = 0.0

    def cell_guess_s(self) -> float:
        return self.config.warmup_s + self.config.duration_s + CELL_OVERHEAD_S

    def eta_s(self) -> float:
        left = estimate_remaining_s(
            self.todo, self.pace.cell_s(self.cell_guess_s()), self.pace.start_s(), self.running_mesh
        )
        now = time.monotonic()
        if self.cell_started:
            left -= min(now - self.cell_started, self.pace.cell_s(self.cell_guess_s()))
        elif self.mesh_started:
            left -= min(now - self.mesh_started, self.pace.start_s())
        return max(0.0, left)

    async def run(self) -> int:
        c = self.config
        units = schedule(plan(c.ocr, c.auth, c.paths, c.concurrency), c.rounds)
        done = recorded(c.out, self.settings)
        self.todo = pending(units, done)
        self.resumed = bool(done)
        if len(units) > len(self.todo):
            what = "cells" if c.rounds == 1 else f"cell rounds ({len(units) // c.rounds} cells x {c.rounds})"
            self.console.print(
                f"{len(units) - len(self.todo)} of {len(units)} {what} already recorded in {c.out}"
            )
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
        )
        with Progress(*columns, console=self.console, disable=not c.progress) as progress:
            overall = progress.add_task(
                "sweep", total=len(units), completed=len(units) - len(self.todo), eta=""
            )
            ticker = asyncio.create_task(self._tick(progress, overall))
            try:
                for mesh_units in [list(g) for _, g in groupby(list(self.todo), key=lambda unit: unit.mesh)]:
                    await self._run_mesh(mesh_units, progress, overall)
            finally:
                ticker.cancel()
        return 0

    async def _tick(self, progress: Progress, task: Any) -> None:
        while True:
            left = self.eta_s()
            progress.update(task, eta=f"ETA {int(left // 60)}m{int(left % 60):02d}s" if self.todo else "")
            await asyncio.sleep(0.5)

    async def _run_mesh(self, units: list[CellRound], progress: Progress, overall: Any) -> None:
        c = self.config
        ocr, auth = units[0].mesh
        data_dir = c.data_dir / f"ocr{ocr}-auth{auth}"
        shutil.rmtree(data_dir, ignore_errors=True)  # a fresh etcd and user table for every mesh
        say: Callable[[str], None] = lambda text: progress.console.print(f"[dim]{text}[/]")  # noqa: E731
        mesh = LocalMesh(
            ocr=ocr,
            auth=auth,
            gateway="gateway" in c.paths,
            bff="bff" in c.paths,
            workers=c.workers,
            data_dir=data_dir,
            ports=MeshPorts.ephemeral(),
            say=say,
            own_sessions=False,  # one session with the load generator: one CPU share on a busy box
        )
        for note in mesh.notes:
            self._note(note)
        progress.update(overall, description=f"starting {ocr} OCR x {auth} auth")
        self.mesh_started = time.monotonic()
        async with mesh:
            self.pace.starts.append(time.monotonic() - self.mesh_started)
            self.mesh_started = 0.0
            self.running_mesh = (ocr, auth)
            account, mix_accounts = await self._accounts(mesh)
            sessions = bff_sessions(mesh, account)
            try:
                await self._run_cells(mesh, units, account, mix_accounts, sessions, progress, overall)
            finally:
                if sessions is not None:
                    await sessions.close()
        self.running_mesh = None

    async def _run_cells(
        self,
        mesh: LocalMesh,
        units: list[CellRound],
        account: Account | None,
        mix_accounts: list[Account],
        sessions: BffSessions | None,
        progress: Progress,
        overall: Any,
    ) -> None:
        c = self.config
        for unit in units:
            cell = unit.cell
            label = cell.key if c.rounds == 1 else f"{cell.key} round {unit.round}/{c.rounds}"
            progress.update(overall, description=label)
            self.cell_started = time.monotonic()
            try:
                record = await self._measure(mesh, unit, account, mix_accounts, sessions)
            except PathUnavailable as exc:
                self._note(f"{cell.path}: skipped ({exc})")
                self.todo.remove(unit)
                self.cell_started = 0.0
                continue
            path = cell_file(c.out, cell, unit.round)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            self.pace.cells.append(time.monotonic() - self.cell_started)
            self.cell_started = 0.0
            self.todo.remove(unit)
            progress.advance(overall)
            s = record["summary"]
            progress.console.print(
                f"{label}: {s['ok_per_s']:.2f} OK/s, p95 {s['p95_ok_ms'] / 1e3:.2f}s, failed "
                f"{100 * s['failure_rate']:.1f}%, peak RSS {record['rss_mib']['total_peak']:.0f} MiB"
            )

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
            self.console.print(f"[yellow]note: {note}[/]")

    async def _accounts(self, mesh: LocalMesh) -> tuple[Account | None, list[Account]]:
        if not mesh.auth_on:
            return None, []
        address = mesh.addresses("auth")[0]
        account, *mix_accounts = new_accounts(1 + (MIX_USERS if self.config.mix.get("login") else 0))
        for each in (account, *mix_accounts):
            await register(address, each)
        return account, mix_accounts

    async def _measure(
        self,
        mesh: LocalMesh,
        unit: CellRound,
        account: Account | None,
        mix_accounts: list[Account],
        sessions: BffSessions | None,
    ) -> dict[str, Any]:
        c = self.config
        cell = unit.cell
        metadata = await bearer_metadata(mesh, account)
        common: dict[str, Any] = {
            "concurrency": cell.concurrency,
            "image": self.image,
            "filename": c.image.name,
            "metadata": metadata,
            "mix": c.mix or None,
            "mix_accounts": mix_accounts,
            "sessions": sessions,
        }
        metrics = {child.name: str(child.info.get("metrics", "")) for child in mesh.children("ocr")}
        with RssSampler(mesh.pids()) as rss:
            if c.warmup_s > 0:
                await run_path_load(
                    mesh, cell.path, duration_s=c.warmup_s, name=f"{cell.key} warm-up", **common
                )
            before = await scrape_all(metrics)
            load_before = os.getloadavg()[0]
            with CpuMeter(mesh.pids()) as cpu:
                result = await run_path_load(
                    mesh, cell.path, duration_s=c.duration_s, name=cell.key, **common
                )
            load_after = os.getloadavg()[0]
            after = await scrape_all(metrics)
        return {
            "cell": {
                "key": cell.key,
                "ocr": cell.ocr,
                "auth": cell.auth,
                "path": cell.path,
                "concurrency": cell.concurrency,
            },
            # Round N of --rounds; odd rounds run the mesh's cells in plan order, even rounds reversed.
            "round": unit.round,
            "settings": self.settings.fingerprint(),
            "settings_detail": {
                "image": c.image.name,
                "image_sha256": self.settings.image_sha256,
                "duration_s": c.duration_s,
                "warmup_s": c.warmup_s,
                "workers": c.workers,
                "mix": c.mix,
            },
            "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "summary": summarize(result.report),
            "server": server_summary(before, after),
            "rss_mib": {
                "total_peak": rss.peak / MIB,
                "by_process": {name: peak / MIB for name, peak in rss.peaks.items()},
            },
            # The machine's 1-minute load average around the measured load (other work shows here).
            "load_1m": [round(load_before, 2), round(load_after, 2)],
            "cpu": cpu_record(cpu.use),
            "mix": {kind: summarize(r) for kind, r in result.by_kind.items()} if result.by_kind else None,
            "ghz": without_details(result.report),
        }


def cpu_record(use: CpuUse | None) -> dict[str, Any] | None:
    """A cell's CPU: cores (CPU seconds per second of the measured load) used by each process tree,
    by the client (the load generator with the sweep's samplers) and by the whole machine, and the
    cores the hypervisor stole."""
    if use is None:
        return None
    return {
        "seconds": round(use.seconds, 2),
        "cores": {name: round(cores, 4) for name, cores in use.cores.items()},
        "machine_cores": round(use.machine_cores, 3),
        "stolen_cores": round(use.stolen_cores, 3),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--ocr", default="1,2", help="OCR instance counts (default 1,2)")
    parser.add_argument("--auth", default="1", help="auth instance counts (default 1; 0: no auth, no tokens)")
    parser.add_argument(
        "--concurrency", "-c", default="1,4,16,64", help="closed-loop client counts (default 1,4,16,64)"
    )
    parser.add_argument(
        "--path", default="direct,gateway", help="ways in: direct, gateway, bff (default direct,gateway)"
    )
    parser.add_argument("--duration", "-z", default="20s", help="measured load per cell (default 20s)")
    parser.add_argument("--warmup", default="3s", help="unmeasured load before each cell (default 3s)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image every call sends")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="measure each cell N times, round by round on the same mesh, odd rounds in plan order and "
        "even rounds reversed; the report gives medians with min-max and paired ratios (default 1)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes per OCR instance (default 1)"
    )
    parser.add_argument(
        "--mix", default="", help="mixed workload, e.g. login=1,ocr=9 (logins among OCR calls)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default docs/benchmarks/sweep-DATE); cells recorded there are skipped",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".ocrmesh/sweep"),
        help="where each mesh keeps etcd data and logs",
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")


def config_from(ns: argparse.Namespace, argv: Sequence[str] | None = None) -> SweepConfig:
    try:
        duration_s, warmup_s = parse_duration(ns.duration), parse_duration(ns.warmup)
    except ValueError as exc:
        raise PlanError(f"--duration/--warmup: {exc}") from None
    if duration_s <= 0:
        raise PlanError("--duration must be above 0 (for example 20s)")
    if ns.workers < 1:
        raise PlanError("--workers must be at least 1")
    if ns.rounds < 1:
        raise PlanError("--rounds must be at least 1 (for example --rounds 3)")
    mix = parse_mix(ns.mix) if ns.mix else {}
    auth = parse_counts(ns.auth, "--auth", minimum=0)
    if mix.get("login") and 0 in auth:
        raise PlanError("--mix with logins needs auth instances: drop 0 from --auth")
    out = ns.out or ROOT / "docs" / "benchmarks" / f"sweep-{dt.date.today().isoformat()}"
    args = list(sys.argv[1:] if argv is None else argv)
    return SweepConfig(
        ocr=parse_counts(ns.ocr, "--ocr"),
        auth=auth,
        paths=parse_paths(ns.path),
        concurrency=parse_counts(ns.concurrency, "--concurrency"),
        duration_s=duration_s,
        warmup_s=warmup_s,
        image=ns.image,
        out=out,
        data_dir=ns.data_dir.resolve(),
        workers=ns.workers,
        mix=mix,
        rounds=ns.rounds,
        progress=not ns.no_progress,
        command="ocrmesh " + shlex.join(args) if args else PROG,
    )


def report(config: SweepConfig, elapsed_s: float, notes: Sequence[str], console: Console) -> int:
    settings = config.settings(config.image.read_bytes())
    records = [r for r in load_records(config.out) if r.get("settings") == settings.fingerprint()]
    if not records:
        console.print(f"{PROG}: no recorded cells with these settings in {config.out}; run the sweep first")
        return 1
    found = meta(config, elapsed_s, notes)
    previous = config.out / "sweep.json"
    if not elapsed_s and previous.exists():  # --report-only keeps the run's own date, time, notes, matrix
        before = json.loads(previous.read_text(encoding="utf-8")).get("meta", {})
        kept = ("date", "elapsed_s", "notes", "command", "matrix")
        found |= {key: before[key] for key in kept if key in before}
    found["rounds"] = max(record_round(r) for r in records)  # what is recorded, whatever --rounds said
    written = write_report(config.out, records, found)
    cells = len({r["cell"]["key"] for r in records})
    console.print(
        f"report: {written['md']} ({cells} cells, {found['rounds']} round(s); "
        "CSV, JSON and PNG plots beside it)"
    )
    return 0


def run(ns: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        config = config_from(ns)
    except PlanError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if not config.image.is_file():
        print(f"{PROG}: no such image: {config.image} (pass --image PATH)", file=sys.stderr)
        return 2
    config.out.mkdir(parents=True, exist_ok=True)
    if ns.report_only:
        return report(config, 0.0, [], console)
    began = time.monotonic()
    sweep = Sweep(config, console)
    try:
        code = run_stoppable(sweep.run())
    except RuntimeError as exc:
        console.print(f"[red]{PROG}: {exc}[/]\nrecorded cells are kept: run the same command again to resume")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: recorded cells are kept; run the same command again to resume")
        return 130
    elapsed, notes = time.monotonic() - began, list(sweep.notes)
    previous = config.out / "sweep.json"
    if sweep.resumed and previous.exists():  # a resumed sweep's time is both runs' time
        before = json.loads(previous.read_text(encoding="utf-8")).get("meta", {})
        elapsed += float(before.get("elapsed_s", 0.0))
        notes = list(dict.fromkeys([*before.get("notes", []), *notes]))
    return code or report(config, elapsed, notes, console)
