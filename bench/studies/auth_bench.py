"""`ocrmesh bench auth`: logins/s vs the raw bcrypt rate, and token verifications/s per core."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bcrypt
import grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from rich.console import Console

from auth_svc import keys
from auth_svc.store import UserRecord
from auth_svc.tokens import TokenSettings, issue_access_token
from bench.report_files import write_report
from bench.stop_signals import run_stoppable
from deploy.service_process import ServiceProcess, running_async
from mesh import __version__, balancer
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from mesh.token_verify import PUBLIC_METHODS, AuthInterceptor, TokenVerifier

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "bench password 123"
LOGIN_TIMEOUT_S = 60.0
VERIFY_TARGET_PER_CORE = 5000.0
console = Console(stderr=True)


@dataclass(frozen=True)
class AuthBenchOptions:
    """What to measure and for how long."""

    bcrypt_cost: int = 12
    seconds: float = 4.0
    rounds: int = 8
    concurrency: int = 0  # 0: two per core
    users: int = 16
    verify_seconds: float = 2.0
    target: str = ""  # an auth service to load instead of starting one

    @property
    def workers(self) -> int:
        return self.concurrency or 2 * (os.cpu_count() or 1)


# -- raw bcrypt -----------------------------------------------------------------------------


def bcrypt_rate(hashed: bytes, threads: int, seconds: float) -> dict[str, float]:
    """bcrypt.checkpw in `threads` threads (it releases the GIL) for about `seconds`."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < deadline:
            bcrypt.checkpw(PASSWORD.encode(), hashed)
            counts[index] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"checks": float(sum(counts)), "seconds": elapsed, "per_s": sum(counts) / elapsed}


# -- logins against a real auth service -----------------------------------------------------


@contextlib.asynccontextmanager
async def auth_service(workdir: Path, cost: int) -> AsyncIterator[str]:
    """An `ocrmesh serve auth` process on a fresh SQLite file; yields its address."""
    argv = [
        "serve", "auth", "--port", "0", "--metrics-port", "-1",
        "--db", f"sqlite+aiosqlite:///{workdir / 'auth.db'}", "--bcrypt-cost", str(cost),
        "--log-level", "warning",
    ]  # fmt: skip
    child = ServiceProcess(
        "the auth service", argv, workdir / "auth-ready.json", workdir / "auth.log", cwd=ROOT
    )
    async with running_async(child, timeout_s=60, grace_s=20):
        yield str(child.info["address"])


@dataclass
class LoginStats:
    ok: int = 0
    errors: dict[str, int] | None = None
    latencies: list[float] | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies or [0.0])
        return {
            "ok": self.ok,
            "errors": dict(self.errors or {}),
            "seconds": self.seconds,
            "per_s": self.ok / self.seconds if self.seconds else 0.0,
            "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
        }


async def login_load(
    stub: auth_pb2_grpc.AuthServiceStub, users: list[str], workers: int, seconds: float
) -> LoginStats:
    """Closed loop: `workers` clients log in back to back; worker i uses users i, i+workers, ..."""
    stats = LoginStats(errors={}, latencies=[])
    assert stats.errors is not None and stats.latencies is not None
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        assert stats.errors is not None and stats.latencies is not None
        for n in itertools.count():
            if time.perf_counter() >= deadline:
                return
            user = users[(index + workers * n) % len(users)]
            began = time.perf_counter()
            try:
                await stub.Login(
                    auth_pb2.LoginRequest(username=user, password=PASSWORD), timeout=LOGIN_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as exc:
                stats.errors[exc.code().name] = stats.errors.get(exc.code().name, 0) + 1
                continue
            stats.latencies.append(time.perf_counter() - began)
            stats.ok += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    stats.seconds = time.perf_counter() - started
    return stats


async def measure_logins(opts: AuthBenchOptions, target: str) -> dict[str, Any]:
    """Rounds of (raw bcrypt on every core, then logins), so background load hits both alike."""
    cores = os.cpu_count() or 1
    users = [f"bench{i:03d}" for i in range(max(opts.users, opts.workers))]
    hashed = await asyncio.to_thread(
        bcrypt.hashpw, PASSWORD.encode(), bcrypt.gensalt(rounds=opts.bcrypt_cost)
    )
    single = await asyncio.to_thread(bcrypt_rate, hashed, 1, opts.seconds)
    raw_rounds: list[dict[str, float]] = []
    login_rounds: list[dict[str, Any]] = []
    async with balancer.direct_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for name in users:
            with contextlib.suppress(grpc.aio.AioRpcError):  # ALREADY_EXISTS on a reused server
                await stub.Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=60)
        await login_load(stub, users, opts.workers, 0.5)  # warm up channel, pool and caches
        for index in range(opts.rounds):
            raw_rounds.append(await asyncio.to_thread(bcrypt_rate, hashed, cores, opts.seconds))
            login_rounds.append((await login_load(stub, users, opts.workers, opts.seconds)).summary())
            console.print(
                f"round {index + 1}/{opts.rounds}: raw bcrypt {raw_rounds[-1]['per_s']:.2f}/s, "
                f"logins {login_rounds[-1]['per_s']:.2f}/s"
            )
    raw_total = sum(r["checks"] for r in raw_rounds) / sum(r["seconds"] for r in raw_rounds)
    ok = sum(r["ok"] for r in login_rounds)
    login_total = ok / sum(r["seconds"] for r in login_rounds)
    errors: dict[str, int] = {}
    for r in login_rounds:
        for code, count in r["errors"].items():
            errors[code] = errors.get(code, 0) + count
    ratios = [
        log["per_s"] / raw["per_s"] for raw, log in zip(raw_rounds, login_rounds, strict=True) if raw["per_s"]
    ]
    return {
        "bcrypt_cost": opts.bcrypt_cost,
        "concurrency": opts.workers,
        "users": len(users),
        "raw_bcrypt_single_thread_per_s": single["per_s"],
        "raw_bcrypt_all_cores_per_s": raw_total,
        "logins_per_s": login_total,
        "logins_vs_raw_bcrypt": login_total / raw_total if raw_total else 0.0,
        "logins_vs_raw_bcrypt_median_round": statistics.median(ratios) if ratios else 0.0,
        "logins_ok": ok,
        "login_errors": errors,
        "login_p50_s": statistics.median(r["p50_s"] for r in login_rounds),
        "login_p95_s": max(r["p95_s"] for r in login_rounds),
        "rounds": [
            {"raw_bcrypt": raw, "logins": log} for raw, log in zip(raw_rounds, login_rounds, strict=True)
        ],
    }


# -- token verification in the interceptor path --------------------------------------------


class _CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def _interceptor_rate(
    interceptor: AuthInterceptor, tokens: list[str], seconds: float
) -> dict[str, float]:
    """AuthInterceptor.intercept_service plus the wrapped handler, one call after another."""

    async def handler(request: bytes, context: Any) -> bytes:
        return request

    inner = grpc.unary_unary_rpc_method_handler(handler)

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return inner

    metadata = [(("authorization", f"Bearer {t}"),) for t in tokens]
    count = 0
    wall, cpu = time.perf_counter(), time.process_time()
    deadline = wall + seconds
    while time.perf_counter() < deadline:
        for md in metadata[count % len(metadata) :][:256]:
            wrapped = await interceptor.intercept_service(continuation, _CallDetails("/bench.B/Call", md))
            await wrapped.unary_unary(b"", None)
            count += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"calls": float(count), "per_s": count / wall, "per_cpu_s": count / cpu if cpu else 0.0}


def _verify_rate(verifier: TokenVerifier, tokens: list[str], seconds: float) -> dict[str, float]:
    count = 0
    wall, cpu = time.perf_counter(), time.process_time()
    deadline = wall + seconds
    while time.perf_counter() < deadline:
        for token in tokens[count % len(tokens) :][:256]:
            verifier.verify(token)
            count += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"calls": float(count), "per_s": count / wall, "per_cpu_s": count / cpu if cpu else 0.0}


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median per-CPU-second rate (other processes' bursts skew single runs)."""
    ordered = sorted(runs, key=lambda r: r["per_cpu_s"])
    return {**ordered[len(ordered) // 2], "runs": float(len(runs))}


async def measure_verification(seconds: float, runs: int = 3, distinct_tokens: int = 2000) -> dict[str, Any]:
    """Verifications/s on one core: every call checking the ES256 signature, and cache hits."""
    now = time.time()
    key = keys.generate(now, now)
    jwks = keys.jwks_document([key])
    settings = TokenSettings(DEFAULT_ISSUER, DEFAULT_AUDIENCE, 900.0, 3600.0)
    user = UserRecord("bench-user", "bench", "", now)
    tokens = [
        issue_access_token(key, user, now, settings, "bench-session")[0] for _ in range(distinct_tokens)
    ]
    # cache_size=0: every call verifies the signature (a new token on each call).
    cold = TokenVerifier(jwks, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE, cache_size=0)
    warm = TokenVerifier(jwks, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE)
    checked: list[dict[str, float]] = []
    cached: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    for _ in range(runs):
        checked.append(await _interceptor_rate(AuthInterceptor(cold, PUBLIC_METHODS), tokens, seconds))
        cached.append(await _interceptor_rate(AuthInterceptor(warm, PUBLIC_METHODS), tokens[:1], seconds))
        bare.append(_verify_rate(cold, tokens, seconds))
    return {
        "interceptor_signature_checked": _median_run(checked),
        "interceptor_cached_token": _median_run(cached),
        "verifier_signature_checked": _median_run(bare),
        "all_runs": {"signature_checked": checked, "cached_token": cached, "verifier": bare},
        "target_per_core": VERIFY_TARGET_PER_CORE,
    }


# -- report ---------------------------------------------------------------------------------


async def run_auth_bench(opts: AuthBenchOptions) -> dict[str, Any]:
    results: dict[str, Any] = {"options": asdict(opts)}
    console.print("token verification (one core) ...")
    results["verification"] = await measure_verification(opts.verify_seconds, runs=min(opts.rounds, 3))
    console.print(f"logins at bcrypt cost {opts.bcrypt_cost}, -c {opts.workers} ...")
    if opts.target:
        results["logins"] = await measure_logins(opts, opts.target)
    else:
        with tempfile.TemporaryDirectory(prefix="ocrmesh-auth-bench-") as tmp:
            async with auth_service(Path(tmp), opts.bcrypt_cost) as address:
                results["logins"] = await measure_logins(opts, address)
    results["meta"] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "ocrmesh": __version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "bcrypt": importlib.metadata.version("bcrypt"),
        "server": opts.target or "ocrmesh serve auth (SQLite, started by the bench)",
        "load_average": os.getloadavg(),
    }
    return results


def markdown(results: dict[str, Any]) -> str:
    m, lg, v = results["meta"], results["logins"], results["verification"]
    cold, warm = v["interceptor_signature_checked"], v["interceptor_cached_token"]
    bare = v["verifier_signature_checked"]
    errors = ", ".join(f"{k} {n}" for k, n in lg["login_errors"].items()) or "none"
    verdict = "meets" if cold["per_cpu_s"] >= VERIFY_TARGET_PER_CORE else "misses"
    load = ", ".join(f"{x:.2f}" for x in m["load_average"])
    lines = [
        f"# Auth benchmark ({m['date']})",
        "",
        f"ocrmesh {m['ocrmesh']}, Python {m['python']}, bcrypt {m['bcrypt']}, {m['cpus']} CPUs "
        f"({m['machine']}), load average at the end {load}. Server: {m['server']}.",
        "Reproduce with `ocrmesh bench auth` (`bench/auth_bench.py`).",
        "",
        f"## Logins (bcrypt cost {lg['bcrypt_cost']}, closed loop, -c {lg['concurrency']}, "
        f"{lg['users']} users)",
        "",
        "Raw bcrypt (`checkpw` in one thread per core, in the bench process) and logins against the",
        "real service alternate in rounds, so background load on the machine hits both alike.",
        "",
        "| round | raw bcrypt checks/s (all cores) | logins/s | ratio | login p50 (s) | login p95 (s) |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(lg["rounds"]):
        raw, log = r["raw_bcrypt"], r["logins"]
        ratio = log["per_s"] / raw["per_s"] if raw["per_s"] else 0.0
        lines.append(
            f"| {i + 1} | {raw['per_s']:.2f} | {log['per_s']:.2f} | {ratio:.2f} | "
            f"{log['p50_s']:.3f} | {log['p95_s']:.3f} |"
        )
    lines += [
        "",
        f"- **Logins: {lg['logins_per_s']:.2f}/s** vs raw bcrypt "
        f"**{lg['raw_bcrypt_all_cores_per_s']:.2f}/s** on all cores: "
        f"**{lg['logins_vs_raw_bcrypt_median_round']:.2f}x** of the bcrypt ceiling (median of the rounds' "
        f"ratios; {lg['logins_vs_raw_bcrypt']:.2f}x over all rounds together). One thread: "
        f"{lg['raw_bcrypt_single_thread_per_s']:.2f} checks/s.",
        f"- {lg['logins_ok']} logins OK; errors: {errors}.",
        f"- Login latency: p50 {lg['login_p50_s']:.3f} s (median of rounds), "
        f"p95 {lg['login_p95_s']:.3f} s (worst round).",
        f"- Logins are bcrypt-bound by design (one check at cost {lg['bcrypt_cost']} is about "
        f"{1 / lg['raw_bcrypt_single_thread_per_s']:.2f} s of one core): a ratio near 1 means the "
        "service adds next to nothing to bcrypt. The client shares the cores with the server; rounds "
        "whose raw rate differs much from the others ran under background load from other processes.",
        "",
        "## Token verification in the interceptor path (one core)",
        "",
        "`AuthInterceptor.intercept_service` plus the wrapped handler, called back to back on one",
        "thread (no network), per wall second and per CPU second of the bench process; the median of "
        f"{int(cold['runs'])} runs.",
        "",
        "| path | per s (wall) | per CPU s |",
        "|---|---|---|",
        f"| interceptor, ES256 signature checked on every call | {cold['per_s']:,.0f} | "
        f"{cold['per_cpu_s']:,.0f} |",
        f"| interceptor, the same token again (verified-token cache) | {warm['per_s']:,.0f} | "
        f"{warm['per_cpu_s']:,.0f} |",
        f"| `TokenVerifier.verify` alone, signature checked | {bare['per_s']:,.0f} | "
        f"{bare['per_cpu_s']:,.0f} |",
        "",
        f"- With the signature checked on every call the interceptor path {verdict} the target of "
        f"{VERIFY_TARGET_PER_CORE:,.0f} verifications/s per core ({cold['per_cpu_s']:,.0f} per CPU second).",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bcrypt-cost", type=int, default=12, help="bcrypt cost of the accounts (default 12)"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of raw bcrypt then logins")
    parser.add_argument("-c", "--concurrency", type=int, default=0, help="login clients (0: two per core)")
    parser.add_argument("--users", type=int, default=16, help="accounts the logins spread over")
    parser.add_argument("--verify-seconds", type=float, default=2.0, help="seconds per verification run")
    parser.add_argument(
        "--target",
        default="",
        help="load this auth service instead of starting one (its bcrypt cost applies)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks", help="folder for auth-DATE.json and .md"
    )


def run(ns: argparse.Namespace) -> int:
    if ns.rounds < 1 or ns.seconds <= 0 or ns.verify_seconds <= 0 or ns.users < 1:
        print(
            "ocrmesh bench auth: --rounds, --seconds, --verify-seconds and --users must be positive",
            file=sys.stderr,
        )
        return 2
    if not 4 <= ns.bcrypt_cost <= 31:
        print("ocrmesh bench auth: --bcrypt-cost must be between 4 and 31", file=sys.stderr)
        return 2
    opts = AuthBenchOptions(
        bcrypt_cost=ns.bcrypt_cost,
        seconds=ns.seconds,
        rounds=ns.rounds,
        concurrency=ns.concurrency,
        users=ns.users,
        verify_seconds=ns.verify_seconds,
        target=ns.target,
    )
    try:
        results = run_stoppable(run_auth_bench(opts))
    except RuntimeError as exc:
        print(f"ocrmesh bench auth: {exc}", file=sys.stderr)
        return 1
    json_path, md_path = write_report(
        ns.out, f"auth-{dt.date.today().isoformat()}", results, markdown(results)
    )
    print(markdown(results))
    print(f"wrote {md_path} and {json_path}")
    return 0
