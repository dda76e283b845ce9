"""`ocrmesh bench layout`: 2 OCR instances x 1 worker vs 1 instance x 2 workers, through MeshClient."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from ocrmesh.ocr.v1 import ocr_pb2
from rich.console import Console
from rich.table import Table

from bench.durations import parse_duration
from bench.loadgen import LoadOptions, run_load
from bench.mesh_calls import mesh_call_factory
from bench.report_files import write_report
from bench.stop_signals import run_stoppable
from bench.studies.foundation import Service, ocr_service
from etcd.launcher import EtcdError, EtcdProcess
from mesh import __version__
from mesh.console import output_console

RECOGNIZE = "ocrmesh.ocr.v1.OcrService.Recognize"
NEAR_EQUAL = 0.10
"""Throughput ratios within this of 1.0 count as equal (run-to-run noise on a shared 2-core box)."""
ROOT = Path(__file__).resolve().parents[2]
console = Console(stderr=True)


@dataclass(frozen=True)
class Layout:
    """A way to spend the machine's cores: `instances` OCR processes with `workers` engines each."""

    key: str
    label: str
    instances: int
    workers: int


LAYOUTS = (
    Layout("2x1", "2 instances x 1 worker", 2, 1),
    Layout("1x2", "1 instance x 2 workers", 1, 2),
)


@dataclass
class Running:
    """One layout's etcd and OCR processes; clients find the instances in that etcd."""

    layout: Layout
    etcd: EtcdProcess
    services: list[Service]


@contextlib.asynccontextmanager
async def running(layouts: Sequence[Layout], workdir: Path) -> AsyncIterator[list[Running]]:
    """Every layout up at once, each with its own etcd (so each client sees only its layout's
    instances; the idle layout's workers wait on an empty queue and take no CPU).

    The OCR processes stay in this process's session (bench.studies.foundation.ocr_service), not one
    session each as `ocrmesh up` starts them: with Linux's autogroup scheduling CPU is shared
    per session, so on a busy machine two instances in two sessions would get twice the share
    of one instance, and the comparison would measure the scheduler, not the layout.
    """
    started: list[Running] = []
    async with contextlib.AsyncExitStack() as stack:
        for layout in layouts:
            data = workdir / layout.key
            etcd = EtcdProcess(data / "etcd", log_file=data / "etcd.log")
            await etcd.start()
            stack.push_async_callback(etcd.stop)
            run = Running(layout, etcd, [])
            started.append(run)
            console.print(f"starting {layout.label} (logs in {data})")
            for index in range(1, layout.instances + 1):
                args = ["--etcd", etcd.endpoint, "--instance-id", f"{layout.key}-{index}"]
                args += ["--workers", str(layout.workers), "--threads-per-worker", "1"]
                home = data / f"ocr-{index}"
                home.mkdir(parents=True, exist_ok=True)
                service = ocr_service(home, *args)
                run.services.append(await asyncio.to_thread(stack.enter_context, service))
        yield started


async def load(run: Running, request: bytes, concurrency: int, duration_s: float) -> dict[str, Any]:
    """Closed-loop Recognize through a MeshClient over the layout's etcd; ghz's report."""
    options = LoadOptions(
        call=RECOGNIZE,
        concurrency=concurrency,
        duration=duration_s,
        timeout=120.0,
        name=f"{run.layout.key} c{concurrency}",
        duration_stop="wait",  # calls still running at the end finish and count
    )
    return await run_load(
        options,
        f"etcd://{run.etcd.endpoint}/ocr",
        request,
        progress=sys.stderr.isatty(),
        call_factory=mesh_call_factory(run.etcd.endpoint, "ocr"),
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def pooled(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell (layout, concurrency) over its rounds: OK/s over the summed time, pooled OK latencies."""
    seconds = sum(r["total"] / 1e9 for r in reports)
    codes: dict[str, int] = {}
    latencies: list[float] = []
    for report in reports:
        for code, n in report["statusCodeDistribution"].items():
            codes[code] = codes.get(code, 0) + n
        latencies += [d["latency"] / 1e9 for d in report.get("details") or [] if d["status"] == "OK"]
    latencies.sort()
    ok = codes.get("OK", 0)
    return {
        "ok": ok,
        "seconds": seconds,
        "ok_per_s": ok / seconds if seconds else 0.0,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "status_codes": codes,
        "per_round_ok_per_s": [
            r["statusCodeDistribution"].get("OK", 0) / (r["total"] / 1e9) if r["total"] else 0.0
            for r in reports
        ],
    }


async def measure(
    image: Path, concurrencies: Sequence[int], duration_s: float, rounds: int
) -> dict[str, Any]:
    data = await asyncio.to_thread(image.read_bytes)
    request = ocr_pb2.RecognizeRequest(image=data, filename=image.name).SerializeToString()
    reports: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="layout-bench-") as tmp:
        async with running(LAYOUTS, Path(tmp)) as runs:
            for run in runs:  # connect, fill caches, first jobs on every worker: not reported
                await load(run, request, 2 * run.layout.instances * run.layout.workers, 4.0)
            for round_no in range(rounds):
                # Alternate the order each round, so neither layout always runs first (or after
                # the other warmed the page cache); load from elsewhere on the box falls on both.
                order = runs if round_no % 2 == 0 else list(reversed(runs))
                for concurrency in concurrencies:
                    for run in order:
                        console.print(
                            f"round {round_no + 1}/{rounds}: {run.layout.label}, -c {concurrency}, "
                            f"{duration_s:.0f}s"
                        )
                        report = await load(run, request, concurrency, duration_s)
                        reports.setdefault((run.layout.key, concurrency), []).append(report)
    cells = {f"{key}@c{c}": pooled(parts) for (key, c), parts in reports.items()}
    first, second = LAYOUTS
    ratios = {}
    for c in concurrencies:
        a, b = cells[f"{first.key}@c{c}"], cells[f"{second.key}@c{c}"]
        paired = [x / y for x, y in zip(a["per_round_ok_per_s"], b["per_round_ok_per_s"], strict=True) if y]
        ratios[f"c{c}"] = {
            "ok_per_s": a["ok_per_s"] / b["ok_per_s"] if b["ok_per_s"] else 0.0,
            # Each round's two runs are back to back: the median of their ratios is less
            # sensitive to the box's load drifting between rounds than the pooled ratio.
            "ok_per_s_paired_median": statistics.median(paired) if paired else 0.0,
            "p95": a["p95_s"] / b["p95_s"] if b["p95_s"] else 0.0,
        }
    return {
        "cells": cells,
        "ratios": ratios,
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "ocrmesh": __version__,
            "python": platform.python_version(),
            "cpus": psutil.cpu_count(),
            "machine": platform.machine(),
            "image": image.name,
            "duration_s": duration_s,
            "rounds": rounds,
            "concurrencies": list(concurrencies),
            "layouts": {layout.key: layout.label for layout in LAYOUTS},
        },
    }


def markdown(result: dict[str, Any]) -> str:
    m, cells = result["meta"], result["cells"]
    first, second = LAYOUTS
    lines = [
        f"# Instance layout: {first.label} vs {second.label} ({m['date']})",
        "",
        f"ocrmesh {m['ocrmesh']}, Python {m['python']}, {m['cpus']} CPUs ({m['machine']}), "
        "shared with other work.",
        f"Closed-loop Recognize of `{m['image']}` through `MeshClient.from_etcd` (each layout in its own "
        "etcd), 1 ONNX Runtime thread per worker, default queue depth (2 per worker). All OCR processes run "
        "in the bench's own session: with Linux autogroup scheduling, one session per instance would give "
        "the 2-instance layout twice the CPU share on a busy machine (a first run that way measured "
        "2x1 at about 1.6x the throughput of 1x2 while other work loaded the box).",
        f"{m['rounds']} round(s) of {m['duration_s']:.0f}s per layout and concurrency; the layouts alternate "
        "and the order flips each round.",
        "OK/s is over the summed time; p50/p95 are over the pooled OK latencies. "
        "Reproduce with `ocrmesh bench layout`.",
        "",
        "| -c | layout | OK images/s | per round | p50 (s) | p95 (s) | status codes |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in m["concurrencies"]:
        for layout in LAYOUTS:
            cell = cells[f"{layout.key}@c{c}"]
            rounds = ", ".join(f"{v:.2f}" for v in cell["per_round_ok_per_s"])
            codes = ", ".join(f"{k} {v}" for k, v in sorted(cell["status_codes"].items()))
            lines.append(
                f"| {c} | {layout.label} | {cell['ok_per_s']:.2f} | {rounds} | {cell['p50_s']:.2f} "
                f"| {cell['p95_s']:.2f} | {codes} |"
            )
        ratio = result["ratios"][f"c{c}"]
        lines.append(
            f"| {c} | **ratio {first.key} / {second.key}** | **{ratio['ok_per_s']:.3f}x** "
            f"| median of rounds {ratio['ok_per_s_paired_median']:.3f}x | | **{ratio['p95']:.3f}x** | |"
        )
    gap = max(abs(r["ok_per_s_paired_median"] - 1) for r in result["ratios"].values())  # from equal
    verdict = (
        "near-equal, as expected: both layouts run 2 engines on 2 cores, so the cores are the limit "
        "and how the engines are grouped into processes costs little either way."
        if gap <= NEAR_EQUAL
        else f"more than {NEAR_EQUAL:.0%} apart in at least one cell; on a shared box look at the per-round "
        "figures before reading a layout effect into it."
    )
    lines += [
        "",
        f"- Throughput ratios {first.key}/{second.key}, median of the rounds' back-to-back pairs: "
        + ", ".join(
            f"-c {c}: {result['ratios'][f'c{c}']['ok_per_s_paired_median']:.3f}x" for c in m["concurrencies"]
        )
        + f" (largest gap {gap:.1%}): {verdict}",
        "- What differs: 2 instances survive one instance's crash or restart (the chaos tests), and the "
        "balancer spreads calls by in-flight x latency; 1 instance x 2 workers shares one admission queue, "
        "so no call waits behind a busy worker while another is free.",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    corpus = ROOT.parent / "shared" / "ocr-corpus"
    parser.add_argument(
        "--image", type=Path, default=corpus / "real" / "rapidocr_ch_en_num.jpg", help="image to recognise"
    )
    parser.add_argument("-c", "--concurrency", default="4,8", help="comma-separated concurrencies")
    parser.add_argument("-z", "--duration", default="20s", help="length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (layouts alternate within each)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks", help="folder for layout-DATE.json and .md"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")


def run(ns: argparse.Namespace) -> int:
    prog = "ocrmesh bench layout"
    if not ns.image.is_file():
        print(f"{prog}: no such file: {ns.image} (pass --image PATH)", file=sys.stderr)
        return 2
    try:
        concurrencies = [int(c) for c in ns.concurrency.split(",") if c.strip()]
        duration_s = parse_duration(ns.duration)
    except ValueError as exc:
        print(f"{prog}: {exc} (e.g. -c 4,8 -z 20s)", file=sys.stderr)
        return 2
    if not concurrencies or min(concurrencies) < 1 or ns.rounds < 1 or duration_s <= 0:
        print(f"{prog}: need concurrencies >= 1, --rounds >= 1 and a positive --duration", file=sys.stderr)
        return 2
    try:
        result = run_stoppable(measure(ns.image, concurrencies, duration_s, ns.rounds))
    except (RuntimeError, EtcdError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    _, md_path = write_report(ns.out, f"layout-{dt.date.today().isoformat()}", result, markdown(result))
    table = Table(title="OCR instance layout (pooled over rounds)")
    for column in ("-c", "layout", "OK/s", "p50 s", "p95 s", "status codes"):
        table.add_column(column)
    for c in concurrencies:
        for layout in LAYOUTS:
            cell = result["cells"][f"{layout.key}@c{c}"]
            codes = ", ".join(f"{k} {v}" for k, v in sorted(cell["status_codes"].items()))
            table.add_row(
                str(c),
                layout.label,
                f"{cell['ok_per_s']:.2f}",
                f"{cell['p50_s']:.2f}",
                f"{cell['p95_s']:.2f}",
                codes,
            )
        ratio = result["ratios"][f"c{c}"]
        table.add_row(
            str(c),
            "ratio 2x1 / 1x2",
            f"{ratio['ok_per_s']:.3f}x (rounds {ratio['ok_per_s_paired_median']:.3f}x)",
            "",
            f"{ratio['p95']:.3f}x",
            "",
        )
    output_console().print(table)
    if ns.json:
        print(json.dumps(result, indent=2))
    print(f"report: {md_path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.instance_layout", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
