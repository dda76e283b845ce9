"""`ocrmesh bench admission`: one OCR instance under well-behaved and retry-at-once clients, side by side."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from ocrmesh.ocr.v1 import ocr_pb2
from rich.console import Console
from rich.table import Table

from bench.durations import parse_duration
from bench.loadgen import LoadOptions, run_load
from bench.machine_facts import cpu_model
from bench.process_rss import RssSampler
from bench.report_files import write_report
from bench.stop_signals import run_stoppable
from bench.studies.foundation import ocr_service
from bench.studies.instance_layout import percentile
from mesh import __version__, balancer
from mesh.console import output_console
from mesh.ocr_client import OcrClient
from ocr_svc.config import OcrConfig

RECOGNIZE = "ocrmesh.ocr.v1.OcrService.Recognize"
ROOT = Path(__file__).resolve().parents[2]
PACING = OcrConfig()  # the instance runs with the defaults: the report quotes its refusal pacing
REFUSALS = (
    "rejected_deadline_unreachable",
    "rejected_queue_wait",
    "rejected_queue_memory",
    "rejected_queue_full",
)
SERVER_COUNTERS = (
    "accepted",
    "completed",
    *REFUSALS,
    "dropped_expired",
    "refusals_held",
    "admitted_after_hold",
)
console = Console(stderr=True)


@dataclass(frozen=True)
class Client:
    """How a load client treats RESOURCE_EXHAUSTED: wait the RetryInfo hint, or call again at once."""

    key: str
    label: str
    honor: bool


CLIENTS = (
    Client("honor", "well-behaved (waits RetryInfo)", True),
    Client("ghz", "retry at once (ghz, --no-honor-retry)", False),
)


def cell_summary(report: dict[str, Any], before: Any, after: Any, peak_rss: int) -> dict[str, Any]:
    """One run: ghz's report boiled down, plus what the server counted meanwhile."""
    codes = report.get("statusCodeDistribution") or {}
    seconds = report["total"] / 1e9
    ok = int(codes.get("OK", 0))
    latencies = sorted(d["latency"] / 1e9 for d in report.get("details") or [] if d["status"] == "OK")
    server = {name: getattr(after, name) - getattr(before, name) for name in SERVER_COUNTERS}
    return {
        "calls": int(report["count"]),
        "ok": ok,
        "seconds": seconds,
        "ok_per_s": ok / seconds if seconds else 0.0,
        "failed": int(report["count"]) - ok,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "status_codes": codes,
        "server": server,
        "refused": sum(server[name] for name in REFUSALS),
        "peak_rss_mib": peak_rss / 2**20,
    }


async def one_cell(
    address: str,
    pid: int,
    request: bytes,
    concurrency: int,
    client: Client,
    duration_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    options = LoadOptions(
        call=RECOGNIZE,
        concurrency=concurrency,
        duration=duration_s,
        timeout=timeout_s,
        honor_retry_info=client.honor,
        name=f"{client.key} c{concurrency}",
        duration_stop="wait",  # calls still running at the end finish and count
    )
    async with balancer.direct_channel(address) as channel:
        info = OcrClient(channel)
        before = (await info.info()).counters
        with RssSampler(pid) as rss:
            report = await run_load(options, address, request, progress=sys.stderr.isatty())
        await asyncio.sleep(0.5)  # let the last drops be counted
        after = (await info.info()).counters
    return cell_summary(report, before, after, rss.peak)


async def measure(
    image: Path,
    concurrencies: Sequence[int],
    rss_concurrency: int,
    duration_s: float,
    timeout_s: float,
    rounds: int,
    workers: int,
) -> dict[str, Any]:
    data = await asyncio.to_thread(image.read_bytes)
    request = ocr_pb2.RecognizeRequest(image=data, filename=image.name).SerializeToString()
    cells: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="admission-bench-") as tmp:
        args = ["--threads-per-worker", "1"] + (["--workers", str(workers)] if workers else [])
        with ocr_service(Path(tmp), *args) as svc:
            console.print(f"OCR instance at {svc.address}; warming up")
            await one_cell(svc.address, svc.proc.pid, request, 4, CLIENTS[0], 4.0, timeout_s)
            plan: list[tuple[int, Client]] = []
            for round_no in range(rounds):
                order = CLIENTS if round_no % 2 == 0 else tuple(reversed(CLIENTS))
                plan += [(c, client) for c in concurrencies for client in order]
            plan += [(rss_concurrency, client) for client in CLIENTS]
            for step, (c, client) in enumerate(plan, 1):
                console.print(f"[bold]{step}/{len(plan)}[/] -c {c}, {client.label}, {duration_s:.0f}s")
                cell = await one_cell(svc.address, svc.proc.pid, request, c, client, duration_s, timeout_s)
                cells.setdefault(f"{client.key}@c{c}", []).append(cell)
    pooled = {key: pool(parts) for key, parts in cells.items()}
    ratios = {
        f"c{c}": pooled[f"ghz@c{c}"]["ok_per_s"] / pooled[f"honor@c{c}"]["ok_per_s"]
        if pooled[f"honor@c{c}"]["ok_per_s"]
        else 0.0
        for c in [*concurrencies, rss_concurrency]
    }
    return {
        "cells": pooled,
        "ratios_ghz_vs_honor": ratios,
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "ocrmesh": __version__,
            "python": platform.python_version(),
            "cpus": psutil.cpu_count(),
            "cpu_model": cpu_model(),
            "machine": platform.machine(),
            "image": image.name,
            "duration_s": duration_s,
            "timeout_s": timeout_s,
            "rounds": rounds,
            "workers": workers or psutil.cpu_count(),
            "concurrencies": list(concurrencies),
            "rss_concurrency": rss_concurrency,
        },
    }


def pool(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell over its rounds: sums, OK/s over the summed time, the worst p95 and peak RSS."""
    seconds = sum(p["seconds"] for p in parts)
    ok = sum(p["ok"] for p in parts)
    codes: dict[str, int] = {}
    server: dict[str, int] = {}
    for part in parts:
        for code, n in part["status_codes"].items():
            codes[code] = codes.get(code, 0) + n
        for name, n in part["server"].items():
            server[name] = server.get(name, 0) + n
    return {
        "calls": sum(p["calls"] for p in parts),
        "ok": ok,
        "seconds": seconds,
        "ok_per_s": ok / seconds if seconds else 0.0,
        "failed": sum(p["failed"] for p in parts),
        "p50_s": max(p["p50_s"] for p in parts),
        "p95_s": max(p["p95_s"] for p in parts),
        "status_codes": codes,
        "server": server,
        "refused": sum(p["refused"] for p in parts),
        "peak_rss_mib": max(p["peak_rss_mib"] for p in parts),
        "per_round_ok_per_s": [p["ok_per_s"] for p in parts],
    }


def _refusal_text(cell: dict[str, Any]) -> str:
    s = cell["server"]
    parts = [
        f"deadline {s['rejected_deadline_unreachable']}",
        f"max wait {s['rejected_queue_wait']}",
        f"memory {s['rejected_queue_memory']}",
        f"cap {s['rejected_queue_full']}",
    ]
    return ", ".join(parts) + f"; expired {s['dropped_expired']}; held {s['refusals_held']}"


def markdown(result: dict[str, Any]) -> str:
    m, cells = result["meta"], result["cells"]
    lines = [
        f"# Admission under well-behaved and retry-at-once clients ({m['date']})",
        "",
        f"ocrmesh {m['ocrmesh']}, Python {m['python']}, {m['cpus']} CPUs ({m['cpu_model']}, {m['machine']}), "
        "shared with other work.",
        f"One OCR instance, {m['workers']} workers x 1 ONNX Runtime thread, default admission "
        "(predicted wait within the deadline and 60 s, 256 MiB queued). "
        f"Closed-loop `Recognize` of `{m['image']}` over one direct channel, "
        f"`-t {m['timeout_s']:.0f}s` per call, `-z {m['duration_s']:.0f}s` per run, "
        "`--duration-stop wait`.",
        "A well-behaved client waits the RetryInfo hint (at most 5 s) before its next call; a retry-at-once "
        "client calls again at once, as ghz does. Neither retries the refused call: each attempt is one call "
        "in the report. "
        f"{m['rounds']} round(s) at each of -c {', '.join(map(str, m['concurrencies']))}; the client kinds "
        f"alternate and the order flips each round; one run each at -c {m['rss_concurrency']} for memory.",
        "Server refusals by reason and queue drops are GetInfo counter deltas over the run. "
        "Reproduce with `ocrmesh bench admission`.",
        "",
        "| -c | client | calls | OK | OK/s | per round | p50 (s) | p95 (s) | status codes | server refusals "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in [*m["concurrencies"], m["rss_concurrency"]]:
        for client in CLIENTS:
            cell = cells[f"{client.key}@c{c}"]
            rounds = ", ".join(f"{v:.2f}" for v in cell["per_round_ok_per_s"])
            codes = ", ".join(f"{k} {v}" for k, v in sorted(cell["status_codes"].items()))
            lines.append(
                f"| {c} | {client.label} | {cell['calls']} | {cell['ok']} | {cell['ok_per_s']:.2f} "
                f"| {rounds} | {cell['p50_s']:.2f} | {cell['p95_s']:.2f} | {codes} | {_refusal_text(cell)} "
                f"| {cell['peak_rss_mib']:.0f} |"
            )
        ratio = result["ratios_ghz_vs_honor"][f"c{c}"]
        lines.append(f"| {c} | **retry-at-once / well-behaved OK/s** | | | **{ratio:.3f}x** | | | | | | |")
    peak = max(cell["peak_rss_mib"] for cell in cells.values())
    lines += [
        "",
        "- Ratios of OK/s, retry-at-once over well-behaved: "
        + ", ".join(f"-c {k[1:]}: {v:.3f}x" for k, v in result["ratios_ghz_vs_honor"].items()),
        f"- Peak RSS of the instance (server and workers) over all runs: {peak:.0f} MiB.",
        "- A refusal is `DEADLINE_UNREACHABLE` when the predicted wait plus one job does not fit the call's "
        "deadline: at a concurrency whose closed-loop wait exceeds the deadline, those are the calls that "
        f"could not have been answered in time. Refusals past {PACING.refusal_rate:g}/s are held up to "
        f"{PACING.refusal_hold_s:g} s (the instance's defaults; never past the deadline) and admitted if "
        "room opens: 'held' counts them.",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    corpus = ROOT.parent / "shared" / "ocr-corpus"
    parser.add_argument(
        "--image", type=Path, default=corpus / "real" / "rapidocr_ch_en_num.jpg", help="image to recognise"
    )
    parser.add_argument("-c", "--concurrency", default="4,16,64", help="comma-separated concurrencies")
    parser.add_argument("--rss-concurrency", type=int, default=256, help="one run each at this -c for memory")
    parser.add_argument("-z", "--duration", default="20s", help="length of each run")
    parser.add_argument("-t", "--timeout", default="20s", help="deadline of each call (ghz's -t)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (client kinds alternate within each)")
    parser.add_argument("--workers", type=int, default=0, help="OCR workers (0: one per core)")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "benchmarks",
        help="folder for admission-DATE.json and .md",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")


def run(ns: argparse.Namespace) -> int:
    prog = "ocrmesh bench admission"
    if not ns.image.is_file():
        print(f"{prog}: no such file: {ns.image} (pass --image PATH)", file=sys.stderr)
        return 2
    try:
        concurrencies = [int(c) for c in ns.concurrency.split(",") if c.strip()]
        duration_s = parse_duration(ns.duration)
        timeout_s = parse_duration(ns.timeout)
    except ValueError as exc:
        print(f"{prog}: {exc} (e.g. -c 16,64 -z 20s -t 20s)", file=sys.stderr)
        return 2
    if not concurrencies or min(concurrencies) < 1 or ns.rss_concurrency < 1 or ns.rounds < 1:
        print(f"{prog}: need concurrencies >= 1 and --rounds >= 1", file=sys.stderr)
        return 2
    if duration_s <= 0 or timeout_s <= 0 or ns.workers < 0:
        print(f"{prog}: need a positive --duration and --timeout, and --workers >= 0", file=sys.stderr)
        return 2
    args = (ns.image, concurrencies, ns.rss_concurrency, duration_s, timeout_s, ns.rounds, ns.workers)
    try:
        result = run_stoppable(measure(*args))
    except RuntimeError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    _, md_path = write_report(ns.out, f"admission-{dt.date.today().isoformat()}", result, markdown(result))
    table = Table(title="One OCR instance: well-behaved vs retry-at-once clients")
    for column in ("-c", "client", "calls", "OK/s", "p95 s", "failed", "refused (deadline)", "RSS MiB"):
        table.add_column(column)
    for c in [*concurrencies, ns.rss_concurrency]:
        for client in CLIENTS:
            cell = result["cells"][f"{client.key}@c{c}"]
            table.add_row(
                str(c),
                client.label,
                str(cell["calls"]),
                f"{cell['ok_per_s']:.2f}",
                f"{cell['p95_s']:.2f}",
                str(cell["failed"]),
                f"{cell['refused']} ({cell['server']['rejected_deadline_unreachable']})",
                f"{cell['peak_rss_mib']:.0f}",
            )
        table.add_row(
            str(c), "ratio retry-at-once / well-behaved", "", f"{result['ratios_ghz_vs_honor'][f'c{c}']:.3f}x"
        )
    output_console().print(table)
    if ns.json:
        print(json.dumps(result, indent=2))
    print(f"report: {md_path}")
    return 0
