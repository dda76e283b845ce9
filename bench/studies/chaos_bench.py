"""`ocrmesh bench chaos`: kill -9 one of two OCR instances mid-run, direct and through the gateway.

The acceptance run of "no call lost to a dead instance": a local mesh (etcd, auth, gateway), and per
run two fresh `ocrmesh serve ocr --workers 1 --require-auth` instances; a timed Recognize load of the
corpus photo (ghz's defaults: 20 s deadline, `--duration-stop wait`, RetryInfo honoured) goes through
the balancing mesh client (`--etcd`) or the gateway, and one instance is killed with SIGKILL
`--kill-at` seconds in. A run passes when every call ends OK or RESOURCE_EXHAUSTED (the designed
shedding once capacity halves); anything else is a lost call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ocrmesh.ocr.v1 import ocr_pb2
from rich.console import Console

from bench.loadgen import LoadOptions, insecure_calls, run_load
from bench.machine_facts import machine
from bench.mesh_calls import mesh_call_factory
from bench.report_files import run_study
from bench.studies.gateway_bench import DEFAULT_IMAGE, RECOGNIZE, login, service
from bench.sweep_plan import counts_type
from etcd.launcher import EtcdProcess
from mesh.processes import kill_tree

PATHS = ("direct", "gateway")
PASSING = {"OK", "ResourceExhausted"}


def _healthy_in_envoy(admin: str, addresses: set[str]) -> bool:
    with urllib.request.urlopen(admin + "/clusters", timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    healthy = {
        line.split("::")[1]
        for line in lines
        if line.startswith("ocr::") and "::health_flags::healthy" in line
    }
    return addresses <= healthy


async def _both_reachable(admin: str, addresses: set[str], timeout_s: float = 60) -> None:
    """Wait until Envoy lists both instances healthy: they are in the registry, serving, and the
    gateway path sends to both (the mesh client reads the same registry)."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(_healthy_in_envoy, admin, addresses):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sorted(addresses)} never showed up healthy in the gateway")
        await asyncio.sleep(0.2)


async def _kill_later(pid: int, after_s: float) -> float:
    await asyncio.sleep(after_s)
    kill_tree(pid)  # the instance and its worker processes, as an OOM kill or a lost node would
    return time.monotonic()


async def one_run(
    ns: argparse.Namespace,
    workdir: Path,
    etcd: str,
    gateway: dict[str, Any],
    token: str,
    path: str,
    c: int,
    i: int,
) -> dict[str, Any]:
    """Two fresh instances, the load, the kill; the run's status codes and error texts."""
    common = ["serve", "ocr", "--port", "0", "--metrics-port", "-1", "--etcd", etcd, "--workers", "1"]
    common += ["--require-auth", "--log-level", "warning"]
    tag = f"{path}-c{c}-{i}"
    async with contextlib.AsyncExitStack() as stack:
        victim_info = await stack.enter_async_context(
            service(workdir, f"victim-{tag}", [*common, "--instance-id", f"victim-{tag}"])
        )
        survivor_info = await stack.enter_async_context(
            service(workdir, f"survivor-{tag}", [*common, "--instance-id", f"survivor-{tag}"])
        )
        await _both_reachable(gateway["admin"], {victim_info["address"], survivor_info["address"]})
        options = LoadOptions(
            call=RECOGNIZE,
            concurrency=c,
            duration=ns.seconds,
            timeout=ns.timeout,
            metadata={"authorization": f"Bearer {token}"},
            duration_stop="wait",
            name=tag,
        )
        data = await asyncio.to_thread(ns.image.read_bytes)
        request = ocr_pb2.RecognizeRequest(image=data, filename=ns.image.name).SerializeToString()
        if path == "direct":
            target, factory = f"etcd://{etcd}/ocr", mesh_call_factory(etcd, "ocr")
        else:
            target, factory = gateway["address"], insecure_calls
        killer = asyncio.create_task(_kill_later(int(victim_info["pid"]), ns.kill_at))
        began = time.monotonic()
        report = await run_load(options, target, request, progress=sys.stderr.isatty(), call_factory=factory)
        killed_at = await killer
    codes = dict(report.get("statusCodeDistribution") or {})
    lost = sum(n for code, n in codes.items() if code not in PASSING)
    return {
        "path": path,
        "concurrency": c,
        "run": i,
        "killed_after_s": round(killed_at - began, 2),
        "seconds": report["total"] / 1e9,
        "calls": int(report["count"]),
        "codes": codes,
        "errors": dict(Counter(report.get("errorDistribution") or {})),
        "lost": lost,
    }


async def measure(ns: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    etcd = EtcdProcess(workdir / "etcd", heartbeat_ms=10, election_timeout_ms=100)
    await etcd.start()
    runs: list[dict[str, Any]] = []
    try:
        db = f"sqlite+aiosqlite:///{workdir / 'auth.db'}"
        auth_argv = ["serve", "auth", "--port", "0", "--metrics-port", "-1", "--etcd", etcd.endpoint]
        auth_argv += ["--db", db, "--bcrypt-cost", "4", "--log-level", "warning"]
        gw_argv = ["serve", "gateway", "--etcd", etcd.endpoint, "--port", "0", "--admin-port", "0"]
        gw_argv += ["--xds-port", "0", "--log-level", "warning"]
        async with service(workdir, "auth", auth_argv), service(workdir, "gateway", gw_argv) as gateway:
            for path in ns.paths:
                for c in ns.concurrency:
                    for i in range(1, ns.runs + 1):
                        token = await login(gateway["address"])  # fresh: a token lives 15 min
                        result = await one_run(ns, workdir, etcd.endpoint, gateway, token, path, c, i)
                        runs.append(result)
                        verdict = f"[red]LOST {result['lost']}" if result["lost"] else "[green]no call lost"
                        console.print(f"{path} -c {c} run {i}: {result['codes']} {verdict}")
    finally:
        await etcd.stop()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "image": ns.image.name,
        "seconds": ns.seconds,
        "kill_at_s": ns.kill_at,
        "timeout_s": ns.timeout,
        "runs": runs,
        "lost": sum(r["lost"] for r in runs),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Chaos: kill -9 of one of two OCR instances ({r['date']})",
        "",
        f"Machine: {r['machine']}. Per run: two fresh `ocrmesh serve ocr --workers 1 --require-auth`",
        f"instances, a {r['seconds']:g} s Recognize load of `{r['image']}` (deadline {r['timeout_s']:g} s,",
        "`--duration-stop wait`, RetryInfo honoured), SIGKILL to one instance "
        f"{r['kill_at_s']:g} s in. `direct` is the",
        "balancing mesh client over the registry (`ocrmesh bench --etcd`), `gateway` is Envoy with our xDS.",
        "Produced by `ocrmesh bench chaos`.",
        "",
        "| path | -c | run | calls | OK | RESOURCE_EXHAUSTED | other (lost) | killed at s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r["runs"]:
        codes = x["codes"]
        lines.append(
            f"| {x['path']} | {x['concurrency']} | {x['run']} | {x['calls']} | {codes.get('OK', 0)} | "
            f"{codes.get('ResourceExhausted', 0)} | {x['lost']} | {x['killed_after_s']:.1f} |"
        )
    lost_runs = [x for x in r["runs"] if x["lost"]]
    lines += [
        "",
        f"**Calls lost (any code but OK and RESOURCE_EXHAUSTED): {r['lost']}** "
        f"in {len(lost_runs)} of {len(r['runs'])} runs.",
    ]
    for x in lost_runs:
        lines.append(f"- {x['path']} -c {x['concurrency']} run {x['run']}: {x['errors']}")
    lines.append("")
    return "\n".join(lines)


def _paths(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or set(values) - set(PATHS):
        raise argparse.ArgumentTypeError(f"paths are a comma-separated subset of {', '.join(PATHS)}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image for the Recognize calls")
    parser.add_argument("--runs", type=int, default=5, help="runs per path and concurrency (default 5)")
    parser.add_argument(
        "-c",
        "--concurrency",
        type=counts_type("--concurrency"),
        default=[4, 8],
        help="comma-separated levels (default 4,8)",
    )
    parser.add_argument("--paths", type=_paths, default=list(PATHS), help="direct,gateway (default both)")
    parser.add_argument("--seconds", type=float, default=30.0, help="load seconds per run (default 30)")
    parser.add_argument(
        "--kill-at", type=float, default=10.0, help="SIGKILL this many seconds in (default 10)"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="per-call deadline in s (ghz's 20)")
    parser.add_argument(
        "--out", type=Path, default=None, help="write OUT.json and OUT.md (e.g. docs/benchmarks/chaos-DATE)"
    )


def run(ns: argparse.Namespace) -> int:
    if not ns.image.is_file():
        print(f"chaos bench: no image at {ns.image}; pass --image PATH", file=sys.stderr)
        return 2
    if ns.runs < 1 or ns.seconds <= 0 or not 0 < ns.kill_at < ns.seconds or ns.timeout <= 0:
        print("chaos bench: --runs >= 1, and 0 < --kill-at < --seconds, --timeout > 0", file=sys.stderr)
        return 2
    result = run_study("chaos", ns, measure, markdown)
    if result is None:
        return 1
    return 0 if result["lost"] == 0 else 1
