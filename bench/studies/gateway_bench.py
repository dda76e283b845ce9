"""`ocrmesh bench gateway`: what the Envoy gateway adds, against direct calls to the same instance.

One local mesh (etcd, auth, one OCR instance with --require-auth, `ocrmesh serve gateway`), then in
alternating rounds so background load hits both paths alike: GetInfo latency (p50/p95, -c 1) and
Recognize throughput (-c 8) direct vs through the gateway, with the same token on both paths;
and how long a new registration takes to show in Envoy's /clusters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aetcd
import grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2
from rich.console import Console

from bench.loadgen import CallFactory, LoadOptions, insecure_calls, run_load
from bench.report_files import run_study
from deploy.service_process import ServiceProcess, running_async
from etcd.launcher import EtcdProcess
from mesh import balancer
from mesh.processes import free_port
from mesh.registry import instance_key

ROOT = Path(__file__).resolve().parents[2]
GET_INFO = "ocrmesh.ocr.v1.OcrService.GetInfo"
RECOGNIZE = "ocrmesh.ocr.v1.OcrService.Recognize"
DEFAULT_IMAGE = ROOT.parent / "shared" / "ocr-corpus" / "real" / "rapidocr_ch_en_num.jpg"
PATHS = ("direct", "gateway")


@contextlib.asynccontextmanager
async def service(
    workdir: Path, name: str, argv: list[str], timeout_s: float = 300
) -> AsyncIterator[dict[str, Any]]:
    """`ocrmesh ARGV --ready-file F` as a subprocess; yields its ready file; SIGTERM at the end."""
    child = ServiceProcess(name, argv, workdir / f"{name}-ready.json", workdir / f"{name}.log", cwd=ROOT)
    async with running_async(child, timeout_s):
        yield child.info


async def login(target: str) -> str:
    async with balancer.direct_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        user, password = "bench-gateway", "bench gateway password"
        with contextlib.suppress(grpc.aio.AioRpcError):  # already registered: log in below
            await stub.Register(auth_pb2.RegisterRequest(username=user, password=password), timeout=30)
        answer = await stub.Login(auth_pb2.LoginRequest(username=user, password=password), timeout=30)
    return str(answer.tokens.access_token)


def _percentiles(report: dict[str, Any]) -> dict[int, float]:
    return {int(d["percentage"]): d["latency"] / 1e9 for d in report.get("latencyDistribution") or []}


def _ok(report: dict[str, Any]) -> int:
    return int((report.get("statusCodeDistribution") or {}).get("OK", 0))


async def latency_rounds(
    targets: dict[str, str],
    token: str,
    calls: int,
    rounds: int,
    factories: dict[str, CallFactory] | None = None,
) -> dict[str, Any]:
    """GetInfo at -c 1: per round p50/p95 of each path, the order alternating between rounds.

    `targets` names two paths, the baseline first; `factories` opens a path's connections (default
    plaintext). `added_*` is what the second path adds to the first.
    """
    paths = tuple(targets)
    base, other = paths
    factories = factories or {}
    meta = {"authorization": f"Bearer {token}"} if token else {}
    per: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    request = ocr_pb2.GetInfoRequest().SerializeToString()
    for path in paths:  # warm-up: connections, Envoy's and the service's first-call costs
        await run_load(
            LoadOptions(call=GET_INFO, concurrency=1, total=200, metadata=meta),
            targets[path],
            request,
            call_factory=factories.get(path, insecure_calls),
        )
    for r in range(rounds):
        for path in paths if r % 2 == 0 else paths[::-1]:
            options = LoadOptions(
                call=GET_INFO, concurrency=1, total=calls, metadata=meta, name=f"{path}-{r}"
            )
            report = await run_load(
                options,
                targets[path],
                request,
                progress=sys.stderr.isatty(),
                call_factory=factories.get(path, insecure_calls),
            )
            pct = _percentiles(report)
            per[path].append(
                {"p50_ms": pct[50] * 1e3, "p95_ms": pct[95] * 1e3, "ok": _ok(report), "calls": calls}
            )
    added_p50 = [g["p50_ms"] - d["p50_ms"] for d, g in zip(per[base], per[other], strict=True)]
    added_p95 = [g["p95_ms"] - d["p95_ms"] for d, g in zip(per[base], per[other], strict=True)]
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "per_round": per,
        "median": {
            p: {k: statistics.median(x[k] for x in runs) for k in ("p50_ms", "p95_ms")}
            for p, runs in per.items()
        },
        "added_p50_ms": statistics.median(added_p50),
        "added_p95_ms": statistics.median(added_p95),
        "failed": sum(x["calls"] - x["ok"] for runs in per.values() for x in runs),
    }


async def throughput_rounds(
    targets: dict[str, str],
    token: str,
    image: Path,
    concurrency: int,
    seconds: float,
    rounds: int,
    factories: dict[str, CallFactory] | None = None,
) -> dict[str, Any]:
    """Recognize at -c N for `seconds` per path and round; OK/s and the second path's ratio to the
    first per round (`targets` and `factories` as in `latency_rounds`)."""
    paths = tuple(targets)
    base, other = paths
    factories = factories or {}
    meta = {"authorization": f"Bearer {token}"} if token else {}
    data = await asyncio.to_thread(image.read_bytes)
    request = ocr_pb2.RecognizeRequest(image=data, filename=image.name).SerializeToString()
    per: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    for r in range(rounds):
        for path in paths if r % 2 == 0 else paths[::-1]:
            options = LoadOptions(
                call=RECOGNIZE,
                concurrency=concurrency,
                duration=seconds,
                timeout=120.0,
                metadata=meta,
                duration_stop="wait",
                name=f"{path}-{r}",
            )
            report = await run_load(
                options,
                targets[path],
                request,
                progress=sys.stderr.isatty(),
                call_factory=factories.get(path, insecure_calls),
            )
            elapsed = report["total"] / 1e9
            pct = _percentiles(report)
            per[path].append(
                {
                    "ok_per_s": _ok(report) / elapsed if elapsed else 0.0,
                    "ok": _ok(report),
                    "calls": int(report["count"]),
                    "p50_s": pct.get(50, 0.0),
                    "codes": report.get("statusCodeDistribution") or {},
                }
            )
    ratios = [
        g["ok_per_s"] / d["ok_per_s"] for d, g in zip(per[base], per[other], strict=True) if d["ok_per_s"]
    ]
    return {
        "image": image.name,
        "concurrency": concurrency,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "per_round": per,
        "median_ok_per_s": {p: statistics.median(x["ok_per_s"] for x in runs) for p, runs in per.items()},
        "ratio": statistics.median(ratios) if ratios else 0.0,
        "ratio_gateway_to_direct": statistics.median(ratios) if ratios else 0.0,
        "ratios": ratios,
        "failed": sum(x["calls"] - x["ok"] for runs in per.values() for x in runs),
    }


def _listed(admin: str, address: str) -> bool:
    with urllib.request.urlopen(admin + "/clusters", timeout=5) as answer:
        return f"ocr::{address}::" in answer.read().decode()


async def registration_delay(etcd: str, admin: str, samples: int) -> dict[str, Any]:
    """Seconds from a registry put until Envoy's /clusters lists the address (polled every 5 ms)."""
    host, port = etcd.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), timeout=2)
    delays = []
    try:
        for i in range(samples):
            address = f"127.0.0.1:{free_port()}"
            key = instance_key("ocr", f"bench-reg-{i}").encode()
            start = time.monotonic()
            await client.put(key, json.dumps({"address": address}).encode())
            while not await asyncio.to_thread(_listed, admin, address):
                if time.monotonic() - start > 30:
                    raise RuntimeError(f"{address} did not reach Envoy within 30 s")
                await asyncio.sleep(0.005)
            delays.append(time.monotonic() - start)
            await client.delete(key)
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    return {"samples": samples, "median_s": statistics.median(delays), "max_s": max(delays), "all_s": delays}


async def measure(ns: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    etcd = EtcdProcess(workdir / "etcd", heartbeat_ms=10, election_timeout_ms=100)
    await etcd.start()
    try:
        db = f"sqlite+aiosqlite:///{workdir / 'auth.db'}"
        auth_argv = ["serve", "auth", "--port", "0", "--metrics-port", "-1", "--etcd", etcd.endpoint]
        auth_argv += ["--db", db, "--bcrypt-cost", "4", "--log-level", "warning"]
        ocr_argv = ["serve", "ocr", "--port", "0", "--metrics-port", "-1", "--etcd", etcd.endpoint]
        ocr_argv += ["--require-auth", "--queue-depth", str(ns.concurrency), "--log-level", "warning"]
        gw_argv = ["serve", "gateway", "--etcd", etcd.endpoint, "--port", "0", "--admin-port", "0"]
        gw_argv += ["--xds-port", "0", "--log-level", "warning"]
        async with (
            service(workdir, "auth", auth_argv),
            service(workdir, "ocr", ocr_argv) as ocr,
            service(workdir, "gateway", gw_argv) as gateway,
        ):
            console.print(
                f"mesh up: OCR {ocr['address']}, gateway {gateway['address']} (admin {gateway['admin']})"
            )
            token = await login(gateway["address"])
            targets = {"direct": ocr["address"], "gateway": gateway["address"]}
            deadline = time.monotonic() + 30
            while not await asyncio.to_thread(_listed, gateway["admin"], ocr["address"]):
                if time.monotonic() > deadline:
                    raise RuntimeError("the OCR instance never showed up in the gateway")
                await asyncio.sleep(0.1)
            console.print("registration -> Envoy /clusters ...")
            registration = await registration_delay(etcd.endpoint, gateway["admin"], ns.registrations)
            console.print(f"GetInfo latency, {ns.rounds} rounds x {ns.calls} calls per path ...")
            latency = await latency_rounds(targets, token, ns.calls, ns.rounds)
            console.print(
                f"Recognize throughput at -c {ns.concurrency}, {ns.ocr_rounds} rounds x {ns.seconds:g}s ..."
            )
            throughput = await throughput_rounds(
                targets, token, ns.image, ns.concurrency, ns.seconds, ns.ocr_rounds
            )
    finally:
        await etcd.stop()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs (shared; timings are noisy)",
        "registration": registration,
        "latency": latency,
        "throughput": throughput,
    }


def markdown(r: dict[str, Any]) -> str:
    lat, thr, reg = r["latency"], r["throughput"], r["registration"]
    med = lat["median"]
    ok = thr["median_ok_per_s"]
    lines = [
        f"# Gateway benchmark ({r['date']})",
        "",
        f"Machine: {r['machine']}. One OCR instance (`--require-auth`, default workers), auth and etcd on",
        "loopback; `ocrmesh serve gateway` (Envoy 1.40, `--concurrency 1`, access log on) in front of it.",
        "Direct and gateway runs alternate, round by round, with the same access token (the gateway also",
        "checks it in jwt_authn). Produced by `ocrmesh bench gateway`.",
        "",
        f"## GetInfo latency, -c 1 ({lat['rounds']} rounds x {lat['calls_per_round']} calls/path, medians)",
        "",
        "| path | p50 ms | p95 ms |",
        "|---|---:|---:|",
        f"| direct | {med['direct']['p50_ms']:.2f} | {med['direct']['p95_ms']:.2f} |",
        f"| gateway | {med['gateway']['p50_ms']:.2f} | {med['gateway']['p95_ms']:.2f} |",
        f"| **added by the gateway** | **{lat['added_p50_ms']:+.2f}** | **{lat['added_p95_ms']:+.2f}** |",
        "",
        f"Goal: at most +1 ms at p50 -> {'met' if lat['added_p50_ms'] <= 1.0 else 'NOT met'}. "
        f"Failed calls: {lat['failed']}.",
        "",
        f"## Recognize throughput, -c {thr['concurrency']} ({thr['image']}, {thr['rounds']} rounds x "
        f"{thr['seconds_per_round']:g} s per path)",
        "",
        "| path | OK/s (median) |",
        "|---|---:|",
        f"| direct | {ok['direct']:.2f} |",
        f"| gateway | {ok['gateway']:.2f} |",
        "",
        f"Gateway/direct ratio (median of per-round ratios): **{thr['ratio_gateway_to_direct']:.3f}** "
        f"(rounds: {', '.join(f'{x:.3f}' for x in thr['ratios'])}); goal >= 0.9 -> "
        f"{'met' if thr['ratio_gateway_to_direct'] >= 0.9 else 'NOT met'}. Failed calls: {thr['failed']}.",
        "",
        "## Registration to Envoy endpoints",
        "",
        f"A registry put until Envoy's admin /clusters lists the address ({reg['samples']} samples): median "
        f"{reg['median_s'] * 1e3:.0f} ms, max {reg['max_s'] * 1e3:.0f} ms (goal: within 2 s).",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image for the Recognize runs")
    parser.add_argument("-n", "--calls", type=int, default=2000, help="GetInfo calls per round and path")
    parser.add_argument("--rounds", type=int, default=5, help="GetInfo rounds (alternating paths)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="Recognize calls in flight")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per Recognize round and path")
    parser.add_argument("--ocr-rounds", type=int, default=3, help="Recognize rounds (alternating paths)")
    parser.add_argument("--registrations", type=int, default=10, help="registration-delay samples")
    parser.add_argument(
        "--out", type=Path, default=None, help="write OUT.json and OUT.md (e.g. docs/benchmarks/gateway-DATE)"
    )


def run(ns: argparse.Namespace) -> int:
    if not ns.image.is_file():
        print(f"gateway bench: no image at {ns.image}; pass --image PATH", file=sys.stderr)
        return 2
    if min(ns.calls, ns.rounds, ns.concurrency, ns.ocr_rounds, ns.registrations) < 1 or ns.seconds <= 0:
        print("gateway bench: counts and --seconds must be positive", file=sys.stderr)
        return 2
    return 0 if run_study("gateway", ns, measure, markdown) is not None else 1
