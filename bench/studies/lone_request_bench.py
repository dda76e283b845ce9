"""`ocrmesh bench lone-request`: --lone-request-threads auto vs off, side by side in one run.

Two OCR instances of the same build and layout on loopback (`--workers 2` each, the default
`serve ocr` layout on 2 cores), one with the wide sessions (`auto`), one without (`off`); the `auto`
one gets a lock file of its own, so OCR processes outside the benchmark never make it narrow. In
every round each concurrency runs against both, the order flipping each round, so load from
anything else on the machine falls on both alike. Per run: OK/s, p50/p95 latency, the share of jobs
that ran wide (GetInfo counters.widened) and the 1-minute load average after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from ocrmesh.ocr.v1 import ocr_pb2
from rich.console import Console

from bench.loadgen import LoadOptions, run_load
from bench.machine_facts import cpu_model
from bench.report_files import run_study
from bench.studies.gateway_bench import DEFAULT_IMAGE, RECOGNIZE, service
from bench.sweep_plan import counts_type
from mesh import balancer
from mesh.ocr_client import OcrClient

ARMS = ("off", "auto")
GOAL_C1_THROUGHPUT = 1.1  # issue 22's line against the peer; here against ocrmesh without it
GOAL_NO_REGRESSION = 0.98  # at c >= 4


async def _widened_and_completed(address: str) -> tuple[int, int]:
    async with balancer.direct_channel(address) as channel:
        info = await OcrClient(channel).info()
    return info.counters.widened, info.counters.completed


def _pct(report: dict[str, Any], p: int) -> float:
    for d in report.get("latencyDistribution") or []:
        if int(d["percentage"]) == p:
            return float(d["latency"]) / 1e9
    return 0.0


async def measure(ns: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    common = ["serve", "ocr", "--port", "0", "--metrics-port", "-1", "--log-level", "warning"]
    common += ["--workers", str(ns.workers)]
    lock = workdir / "cores.lock"
    async with (
        service(workdir, "off", [*common, "--lone-request-threads", "off"]) as off,
        service(
            workdir, "auto", [*common, "--lone-request-threads", "auto", "--idle-cores-file", str(lock)]
        ) as auto,
    ):
        targets = {"off": str(off["address"]), "auto": str(auto["address"])}
        async with balancer.direct_channel(targets["auto"]) as channel:
            lone_threads = (await OcrClient(channel).info()).lone_request_threads
        data = await asyncio.to_thread(ns.image.read_bytes)
        request = ocr_pb2.RecognizeRequest(image=data, filename=ns.image.name).SerializeToString()
        for arm in ARMS:  # warm-up: connections and each worker's first jobs
            await run_load(
                LoadOptions(call=RECOGNIZE, concurrency=ns.workers, total=4 * ns.workers, timeout=120.0),
                targets[arm],
                request,
            )
        runs: list[dict[str, Any]] = []
        for r in range(ns.rounds):
            for c in ns.concurrency:
                for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                    console.print(f"round {r + 1}/{ns.rounds}, -c {c}, {arm} ...")
                    widened0, done0 = await _widened_and_completed(targets[arm])
                    options = LoadOptions(
                        call=RECOGNIZE,
                        concurrency=c,
                        duration=ns.seconds,
                        timeout=120.0,
                        duration_stop="wait",
                        name=f"{arm}-c{c}-{r}",
                    )
                    report = await run_load(options, targets[arm], request, progress=sys.stderr.isatty())
                    widened1, done1 = await _widened_and_completed(targets[arm])
                    ok = int((report.get("statusCodeDistribution") or {}).get("OK", 0))
                    elapsed = report["total"] / 1e9
                    runs.append(
                        {
                            "round": r,
                            "concurrency": c,
                            "arm": arm,
                            "ok": ok,
                            "calls": int(report["count"]),
                            "ok_per_s": ok / elapsed if elapsed else 0.0,
                            "p50_s": _pct(report, 50),
                            "p95_s": _pct(report, 95),
                            "widened_share": (widened1 - widened0) / (done1 - done0)
                            if done1 > done0
                            else 0.0,
                            "load_avg_1m": os.getloadavg()[0],
                        }
                    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, grpcio {grpc.__version__} (shared machine; timings are noisy)",
        "workers": ns.workers,
        "lone_request_threads": lone_threads,
        "image": ns.image.name,
        "seconds": ns.seconds,
        "rounds": ns.rounds,
        "concurrency": list(ns.concurrency),
        "runs": runs,
        "summary": summary(runs, list(ns.concurrency)),
    }


def summary(runs: list[dict[str, Any]], concurrency: list[int]) -> list[dict[str, Any]]:
    """Per concurrency: medians of each arm and of the per-round auto/off ratios (pure)."""
    rows = []
    for c in concurrency:
        by = {
            arm: sorted(
                (x for x in runs if x["concurrency"] == c and x["arm"] == arm), key=lambda x: x["round"]
            )
            for arm in ARMS
        }
        pairs = list(zip(by["off"], by["auto"], strict=True))
        thr = [a["ok_per_s"] / o["ok_per_s"] for o, a in pairs if o["ok_per_s"]]
        p50 = [a["p50_s"] / o["p50_s"] for o, a in pairs if o["p50_s"]]
        rows.append(
            {
                "concurrency": c,
                **{
                    f"{arm}_{key}": statistics.median(x[key] for x in by[arm])
                    for arm in ARMS
                    for key in ("ok_per_s", "p50_s", "p95_s", "widened_share")
                },
                "throughput_ratio": statistics.median(thr) if thr else 0.0,
                "throughput_ratios": thr,
                "p50_ratio": statistics.median(p50) if p50 else 0.0,
                "p50_ratios": p50,
                "load_avg_1m": [x["load_avg_1m"] for x in by["off"] + by["auto"]],
                "failed": sum(x["calls"] - x["ok"] for arm in ARMS for x in by[arm]),
            }
        )
    return rows


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Lone request on the idle cores: --lone-request-threads auto vs off ({r['date']})",
        "",
        f"Machine: {r['machine']}.",
        "",
        f"Two OCR instances, {r['workers']} workers x 1 thread each; `auto` runs a job's models with "
        f"{r['lone_request_threads']} threads while it is the only job on the machine (its own lock "
        f"file), `off` never does. Closed-loop Recognize of `{r['image']}`, {r['seconds']:g} s per run, "
        f"{r['rounds']} rounds, each round every concurrency against both, the order flipping each round. "
        "Produced by `ocrmesh bench lone-request`.",
        "",
        "| clients | off OK/s | auto OK/s | throughput auto/off | off p50 s | auto p50 s | p50 auto/off "
        "| auto p95 s | jobs wide | load avg (1 min) | failed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in r["summary"]:
        loads = s["load_avg_1m"]
        lines.append(
            f"| {s['concurrency']} | {s['off_ok_per_s']:.2f} | {s['auto_ok_per_s']:.2f} "
            f"| **{s['throughput_ratio']:.3f}x** | {s['off_p50_s']:.3f} | {s['auto_p50_s']:.3f} "
            f"| **{s['p50_ratio']:.3f}x** | {s['auto_p95_s']:.3f} | {s['auto_widened_share']:.0%} "
            f"| {min(loads):.1f}-{max(loads):.1f} | {s['failed']} |"
        )
    lines += ["", "Ratios are medians of the per-round ratios; per round:", ""]
    for s in r["summary"]:
        thr = ", ".join(f"{x:.3f}" for x in s["throughput_ratios"])
        p50 = ", ".join(f"{x:.3f}" for x in s["p50_ratios"])
        lines.append(f"- c{s['concurrency']}: throughput {thr}; p50 {p50}")
    lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image every call sends")
    parser.add_argument(
        "-c", "--concurrency", type=counts_type("--concurrency"), default=[1, 2, 4, 8], help="client counts"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (the arms' order flips each)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per OCR instance")
    parser.add_argument(
        "--out", type=Path, default=None, help="write OUT.json and OUT.md (e.g. docs/benchmarks/lone-DATE)"
    )


def run(ns: argparse.Namespace) -> int:
    if not ns.image.is_file():
        print(f"lone-request bench: no image at {ns.image}; pass --image PATH", file=sys.stderr)
        return 2
    if min(ns.rounds, ns.workers) < 1 or ns.seconds <= 0:
        print("lone-request bench: --rounds, --workers and --seconds must be positive", file=sys.stderr)
        return 2
    return 0 if run_study("lone-request", ns, measure, markdown) is not None else 1
