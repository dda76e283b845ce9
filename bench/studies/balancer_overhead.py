"""`ocrmesh bench balancer`: latency the MeshClient adds per call (GetInfo) over direct channels."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from bench.report_files import write_report
from bench.stop_signals import run_stoppable
from bench.studies.foundation import ocr_service
from mesh import __version__, balancer
from mesh.mesh_client import MeshClient, split_targets
from mesh.ocr_client import OcrClient
from mesh.picking import BalancerPolicy, EndpointStats, pick

PATHS = ("direct", "mesh_1", "direct_rr", "mesh_all")
LABELS = {
    "direct": "direct, first",
    "mesh_1": "MeshClient, first",
    "direct_rr": "direct, round-robin",
    "mesh_all": "MeshClient, all",
}
BASELINE = {"mesh_1": "direct", "mesh_all": "direct_rr"}
ROOT = Path(__file__).resolve().parents[2]


class RoundRobin:
    """The unbalanced baseline for several endpoints: plain OcrClients taken in turn."""

    def __init__(self, clients: list[OcrClient]) -> None:
        self.clients = clients
        self.next = 0

    async def info(self, timeout: float) -> object:
        client = self.clients[self.next % len(self.clients)]
        self.next += 1
        return await client.info(timeout=timeout)


def _summary(latencies_ns: list[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    n = len(ordered)
    return {
        "mean_us": statistics.fmean(ordered) / 1e3,
        "p50_us": ordered[n // 2] / 1e3,
        "p99_us": ordered[min(n - 1, int(n * 0.99))] / 1e3,
    }


async def _timed_calls(client: OcrClient | RoundRobin, calls: int, concurrency: int) -> list[int]:
    latencies: list[int] = []
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter_ns()
            await client.info(timeout=10.0)
            latencies.append(time.perf_counter_ns() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pick_cost_us(endpoints: int, picks: int = 20_000) -> float:
    """Microseconds per pure `pick` over `endpoints` endpoints with samples and in-flight calls."""
    rng = random.Random(1)
    policy = BalancerPolicy()
    stats = [
        EndpointStats(f"10.0.0.{i}:50051", ewma_s=0.01 + i / 1000, samples=5, in_flight=i % 3, sampled_at=0.0)
        for i in range(endpoints)
    ]
    for i in range(1000):  # warm up
        pick(stats, rng, i * 1e-4, policy=policy)
    start = time.perf_counter_ns()
    for i in range(picks):
        pick(stats, rng, i * 1e-4, policy=policy)
    return (time.perf_counter_ns() - start) / picks / 1e3


async def measure(targets: list[str], calls: int, rounds: int, concurrency: int) -> dict[str, Any]:
    """Alternate the three paths for `rounds` rounds of `calls` GetInfo calls each; medians per path."""
    per_path: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
    async with (
        contextlib.AsyncExitStack() as stack,
        MeshClient.from_addresses(targets[:1]) as one,
        MeshClient.from_addresses(targets) as every,
    ):
        direct = [OcrClient(await stack.enter_async_context(balancer.direct_channel(t))) for t in targets]
        clients: dict[str, OcrClient | RoundRobin] = {
            "direct": direct[0],
            "mesh_1": one.ocr(),
            "direct_rr": RoundRobin(direct),
            "mesh_all": every.ocr(),
        }
        for client in clients.values():  # connect and warm up
            await _timed_calls(client, min(200, calls), concurrency)
        for round_no in range(rounds):
            order = PATHS[round_no % len(PATHS) :] + PATHS[: round_no % len(PATHS)]  # none always first
            for path in order:
                cpu = time.process_time()
                latencies = await _timed_calls(clients[path], calls, concurrency)
                cpu_us = (time.process_time() - cpu) / calls * 1e6
                per_path[path].append({**_summary(latencies), "client_cpu_us": cpu_us})
        mesh_retries = one.retries + every.retries
    result: dict[str, Any] = {
        "targets": targets,
        "calls_per_round": calls,
        "rounds": rounds,
        "concurrency": concurrency,
        "paths": {
            path: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for path, runs in per_path.items()
        },
        "mesh_retries": mesh_retries,
        "pick_us": {n: pick_cost_us(n) for n in (2, 10, 100)},
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "ocrmesh": __version__,
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    paths = result["paths"]
    result["overhead_us"] = {
        path: {key: paths[path][key] - paths[base][key] for key in ("mean_us", "p50_us", "client_cpu_us")}
        for path, base in BASELINE.items()
    }
    return result


def markdown(result: dict[str, Any]) -> str:
    """The report: latency and client CPU per path, the MeshClient's overhead, the pure pick cost."""
    m = result["meta"]
    lines = [
        f"# Balancer overhead: GetInfo through MeshClient vs direct channels ({m['date']})",
        "",
        f"ocrmesh {m['ocrmesh']}, Python {m['python']}, grpcio {m['grpcio']}, {m['cpus']} CPUs "
        f"({m['machine']}), shared with other work. {len(result['targets'])} real OCR instances on loopback "
        f"(1 worker each); GetInfo is a trivial RPC, so what is left is the client path. "
        f"{result['calls_per_round']} calls per path and round at -c {result['concurrency']}, "
        f"{result['rounds']} rounds with the paths in rotating order; medians over the rounds. "
        "Reproduce with `ocrmesh bench balancer`.",
        "",
        "| path | mean (µs) | p50 (µs) | p99 (µs) | client CPU per call (µs) | +mean | +p50 | +CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in PATHS:
        row = result["paths"][path]
        extra = result["overhead_us"].get(path)
        added = (
            " | ".join(f"{extra[k]:+.0f}" for k in ("mean_us", "p50_us", "client_cpu_us"))
            if extra
            else " | | "
        )
        lines.append(
            f"| {LABELS[path]} | {row['mean_us']:.0f} | {row['p50_us']:.0f} | {row['p99_us']:.0f} "
            f"| {row['client_cpu_us']:.0f} | {added} |"
        )
    picks = ", ".join(f"{n} endpoints {us:.1f} µs" for n, us in result["pick_us"].items())
    one, every = result["overhead_us"]["mesh_1"], result["overhead_us"]["mesh_all"]
    lines += [
        "",
        "+ columns: MeshClient minus its baseline (one endpoint: vs a direct channel; all endpoints: "
        "vs direct channels taken round-robin).",
        "",
        f"- Added latency per call: {one['p50_us']:+.0f} µs at p50 with one endpoint, "
        f"{every['p50_us']:+.0f} µs with all of them; added client CPU {one['client_cpu_us']:+.0f} / "
        f"{every['client_cpu_us']:+.0f} µs per call. A negative figure is noise (one endpoint) or p2c "
        "steering calls to the faster instance (all endpoints). Latency is noisy on a shared box; client CPU "
        "per call is the steadier figure.",
        f"- The pure p2c `pick()`: {picks}.",
        f"- Retries during the run: {result['mesh_retries']}.",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _instances(target: str, count: int) -> Iterator[list[str]]:
    if target:
        yield split_targets(target)
        return
    with tempfile.TemporaryDirectory(prefix="balancer-bench-") as tmp, contextlib.ExitStack() as stack:
        services = [
            stack.enter_context(ocr_service(Path(tmp), "--workers", "1", "--instance-id", f"bench-{i}"))
            for i in range(count)
        ]
        yield [s.address for s in services]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="", help="OCR instances host:port,... (default: start --instances of them)"
    )
    parser.add_argument("--instances", type=int, default=2, help="instances to start without --target")
    parser.add_argument("-n", "--calls", type=int, default=2000, help="GetInfo calls per round and path")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians are reported)")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="calls in flight")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--out",
        default=str(ROOT / "docs" / "benchmarks"),
        help="folder for balancer-DATE.json and .md ('' to write none)",
    )


def run(ns: argparse.Namespace) -> int:
    if ns.calls < 10 or ns.rounds < 1 or ns.concurrency < 1 or ns.instances < 1:
        print(
            "balancer bench: need --calls >= 10, --rounds, --concurrency, --instances >= 1", file=sys.stderr
        )
        return 2
    try:
        with _instances(ns.target, ns.instances) as targets:
            result = run_stoppable(measure(targets, ns.calls, ns.rounds, ns.concurrency))
    except (RuntimeError, grpc.aio.AioRpcError) as exc:
        print(f"balancer bench: {exc}", file=sys.stderr)
        return 1
    if ns.out:
        _, md_path = write_report(
            Path(ns.out), f"balancer-{dt.date.today().isoformat()}", result, markdown(result)
        )
        print(f"report: {md_path}", file=sys.stderr)
    if ns.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(
        title=f"GetInfo latency, {ns.calls} calls x {ns.rounds} rounds at -c {ns.concurrency} (medians)"
    )
    for column in ("path", "mean µs", "p50 µs", "p99 µs", "client CPU µs", "+mean", "+p50", "+CPU"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for path in PATHS:
        row = result["paths"][path]
        extra = result["overhead_us"].get(path)
        table.add_row(
            LABELS[path],
            f"{row['mean_us']:.0f}",
            f"{row['p50_us']:.0f}",
            f"{row['p99_us']:.0f}",
            f"{row['client_cpu_us']:.0f}",
            *(f"{extra[k]:+.0f}" if extra else "" for k in ("mean_us", "p50_us", "client_cpu_us")),
        )
    Console(width=120).print(table)
    picks = ", ".join(f"{n} endpoints {us:.1f} µs" for n, us in result["pick_us"].items())
    print(f"pure pick(): {picks}")
    print("+ columns: MeshClient minus its baseline (first only vs direct; all vs round-robin).")
    print("Latency is noisy on a shared box; client CPU per call is the steadier overhead figure.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.balancer_overhead", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
