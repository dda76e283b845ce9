"""`ocrmesh bench control-plane`: how the mesh's own cost grows with endpoints and watchers.

Per cell (N endpoints, M watchers), everything fresh: a real etcd (the embedded default's timing),
the xDS control plane in a process of its own, a real Envoy on ADS, N stand-in instances of one
service registered by a few registrar processes with the project's registration code (real leases
and keepalives; one lease per instance or one per process), and M real `MeshClient`s watching the
service from a few watcher processes. Then:

1. burst: N registrations at once; seconds until Envoy and every watcher hold all N;
2. steady: CPU of etcd, the control plane, Envoy, the watchers and the registrars while only
   keepalives flow; etcd's own counters give keepalive and range requests per second;
3. changes: a probe instance registers (its own lease, as a real service) and deregisters, one
   change at a time; time from the change until all M watchers and until Envoy's endpoints
   (`cluster.<service>.membership_total`) hold it, control-plane CPU and snapshot build time per change;
4. memory: RSS of etcd, control plane, Envoy; client RSS per watcher.

The stand-ins advertise loopback addresses nothing listens on, so Envoy's health checks are
refused at once (cheap) and the figures are the mesh's own cost. Writes control-plane-DATE.{md,json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.machine_facts import machine
from bench.report_files import table, write_report
from bench.stop_signals import run_stoppable
from etcd.launcher import EtcdProcess
from gateway.bootstraps import envoy_bootstrap
from gateway.envoy_process import EnvoyProcess
from gateway.profile import Profile
from mesh.lease import Registration
from mesh.processes import free_port
from mesh.registry import Instance

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "bench"
DEFAULT_OUT = ROOT / "docs" / "benchmarks"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); with fewer than 100 samples p99 is the maximum."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def split(total: int, parts: int) -> list[int]:
    """`total` spread over at most `parts` non-empty shares, as evenly as can be."""
    parts = max(1, min(parts, total)) if total else 1
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def rss(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def etcd_counters(url: str) -> dict[str, float]:
    """etcd's gRPC message counters by method (received), from its /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("grpc_server_msg_received_total{"):
            labels, _, value = line.rpartition(" ")
            method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
            counts[method] = counts.get(method, 0.0) + float(value)
    return counts


def membership(admin: str) -> int | None:
    """Envoy's host count of the stand-ins' cluster (None before the cluster exists)."""
    path = f"/stats?filter=^cluster\\.{SERVICE}\\.membership_total$"
    with urllib.request.urlopen(admin + path, timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == f"cluster.{SERVICE}.membership_total":
            return int(value)
    return None


class Child:
    """One `python -m bench.studies.control_plane_parts ROLE` process: commands in, JSON lines out."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: dict[tuple[str, str], dict[str, Any]] = {}
        self._seen_changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float) -> dict[str, Any]:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.studies.control_plane_parts",
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
            )
        self._reader = asyncio.create_task(self._read())
        return await self.reply(timeout)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "seen" in data:
                self.seen[(data["seen"], data["kind"])] = data
                self._seen_changed.set()
            else:
                await self.replies.put(data)
        tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
        await self.replies.put({"error": f"{self.name} exited; its log ends:\n{tail}"})

    async def reply(self, timeout: float) -> dict[str, Any]:
        try:
            data = await asyncio.wait_for(self.replies.get(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: no answer within {timeout:g}s (log: {self.log_path})") from None
        if "error" in data:
            raise RuntimeError(f"{self.name}: {data['error']}")
        return data

    async def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.reply(timeout)

    async def wait_seen(self, name: str, kind: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (name, kind) not in self.seen:
            self._seen_changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._seen_changed.wait(), left)
        return self.seen[(name, kind)]

    async def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(RuntimeError, ConnectionError, OSError):
            await self.ask("stop", timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def wait_membership(admin: str, want: int, timeout: float, every: float = 0.005) -> float | None:
    """Poll Envoy until its host count is `want`; the monotonic time it was seen (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(membership, admin) == want:
            return time.monotonic()
        await asyncio.sleep(every)
    return None


class Cell:
    """One (N, M) measurement on a fresh etcd, control plane, Envoy, registrars and watchers."""

    def __init__(self, ns: argparse.Namespace, n: int, m: int, workdir: Path, step: Callable[[str], None]):
        self.ns, self.n, self.m, self.workdir, self.step = ns, n, m, workdir, step
        self.children: list[Child] = []

    def child(self, name: str, argv: list[str]) -> Child:
        kid = Child(name, argv, self.workdir / f"{name}.log")
        self.children.append(kid)
        return kid

    async def run(self) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fast = self.ns.fast_raft
        etcd = EtcdProcess(
            self.workdir / "etcd",
            heartbeat_ms=10 if fast else None,
            election_timeout_ms=100 if fast else None,
        )
        await etcd.start()
        envoy: EnvoyProcess | None = None
        try:
            self.step("control plane and Envoy")
            cp = self.child("control-plane", ["control-plane", "--etcd", etcd.endpoint])
            xds = (await cp.start(60))["xds"]
            profile = Profile(port=free_port(), access_log=False)
            bootstrap = envoy_bootstrap("bench-envoy", xds, 0, profile, delta=self.ns.delta)
            envoy = EnvoyProcess(self.workdir / "envoy", bootstrap, log_path=self.workdir / "envoy.log")
            await envoy.start()
            return await self._measure(etcd, cp, envoy)
        finally:
            await asyncio.gather(*(kid.stop() for kid in reversed(self.children)))
            if envoy is not None:
                await envoy.stop()
            await etcd.stop()

    async def _measure(self, etcd: EtcdProcess, cp: Child, envoy: EnvoyProcess) -> dict[str, Any]:
        ns, n, m = self.ns, self.n, self.m
        assert envoy.pid is not None and etcd.pid is not None
        self.step(f"{m} watchers")
        watchers = [
            self.child(
                f"watchers-{i}",
                ["watchers", "--etcd", etcd.endpoint, "--service", SERVICE, "--count", str(c)],
            )
            for i, c in enumerate(split(m, ns.watcher_procs))
        ]
        ready = await asyncio.gather(*(w.start(120) for w in watchers))
        rss_base = sum(r["rss_base"] for r in ready)
        self.step(f"burst: {n} registrations")
        registrars = [
            self.child(
                f"registrar-{i}",
                [
                    *("registrar", "--etcd", etcd.endpoint, "--service", SERVICE, "--count", str(c)),
                    *("--index", str(i), "--ttl", str(ns.ttl), "--lease-mode", ns.lease_mode),
                ],
            )
            for i, c in enumerate(split(n, ns.registrar_procs))
        ]
        began = time.monotonic()
        registered = await asyncio.gather(*(r.start(300) for r in registrars))
        registered_at = time.monotonic()
        envoy_at = await wait_membership(envoy.admin_url, n, 300, every=0.02)
        counts = await asyncio.gather(*(w.ask(f"wait-count {n} 300", 310) for w in watchers))
        burst = {
            "registered": sum(r["registered"] for r in registered),
            "register_s": registered_at - began,
            "envoy_s": (envoy_at - began) if envoy_at else None,
            "watchers_s": max(c["t"] for c in counts) - began if all(c["ok"] for c in counts) else None,
        }
        await asyncio.sleep(ns.settle_s)  # let the burst's aftermath (builds, pushes, GC) pass

        pids = {
            "etcd": [etcd.pid],
            "control_plane": [cp.pid],
            "envoy": [envoy.pid],
            "watchers": [w.pid for w in watchers],
            "registrars": [r.pid for r in registrars],
        }
        self.step(f"steady keepalives, {ns.steady_s:g}s")
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        counters0 = await asyncio.to_thread(etcd_counters, etcd.url)
        t0 = time.monotonic()
        await asyncio.sleep(ns.steady_s)
        elapsed = time.monotonic() - t0
        cpu1 = {k: cpu_seconds(v) for k, v in pids.items()}
        counters1 = await asyncio.to_thread(etcd_counters, etcd.url)
        steady_cores = {k: (cpu1[k] - cpu0[k]) / elapsed for k in pids}
        load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        rates = {k: (counters1.get(k, 0) - counters0.get(k, 0)) / elapsed for k in counters1}

        self.step(f"{ns.changes} changes")
        stats0 = await cp.ask("stats", 10)
        cp_cpu0, t0 = cpu_seconds(pids["control_plane"]), time.monotonic()
        changes = await self._changes(etcd.endpoint, envoy.admin_url, watchers)
        churn_s = time.monotonic() - t0
        cp_cpu = cpu_seconds(pids["control_plane"]) - cp_cpu0
        stats1 = await cp.ask("stats", 10)
        builds = stats1["builds"] - stats0["builds"]
        build_s = stats1["build_seconds"] - stats0["build_seconds"]
        done = len(changes)
        extra_cpu = max(0.0, cp_cpu - steady_cores["control_plane"] * churn_s)

        rss_now = await asyncio.gather(*(w.ask("rss", 10) for w in watchers))
        watchers_rss = sum(r["rss"] for r in rss_now)
        watcher_lat = [c["watchers_s"] for c in changes if c["watchers_s"] is not None]
        envoy_lat = [c["envoy_s"] for c in changes if c["envoy_s"] is not None]
        return {
            "endpoints": n,
            "watchers": m,
            "lease_mode": ns.lease_mode,
            "delta_xds": ns.delta,
            "registrar_procs": len(registrars),
            "watcher_procs": len(watchers),
            "burst": burst,
            "steady": {
                "seconds": elapsed,
                "loadavg_1m": load,
                "cores": steady_cores,
                "etcd_msgs_per_s": {k: v for k, v in sorted(rates.items()) if v > 0},
                "keepalives_per_s": rates.get("LeaseKeepAlive", 0.0),
            },
            "changes": {
                "count": done,
                "missed_by_watchers": sum(c["watchers_s"] is None for c in changes),
                "missed_by_envoy": sum(c["envoy_s"] is None for c in changes),
                "watchers_p50_s": percentile(watcher_lat, 50),
                "watchers_p99_s": percentile(watcher_lat, 99),
                "envoy_p50_s": percentile(envoy_lat, 50),
                "envoy_p99_s": percentile(envoy_lat, 99),
                "all_p99_s": percentile(
                    [max(w, e) for w, e in zip(watcher_lat, envoy_lat, strict=False)], 99
                ),
                "first_watcher_p50_s": percentile(
                    [c["first_watcher_s"] for c in changes if c["first_watcher_s"]], 50
                ),
                "samples": changes,
                "cp_cpu_per_change_ms": 1e3 * extra_cpu / done if done else math.nan,
                "builds_per_change": builds / done if done else math.nan,
                "build_mean_ms": 1e3 * build_s / builds if builds else 0.0,
                "build_max_ms": 1e3 * stats1["build_max_s"],
                "builds_total": stats1["builds"],
            },
            "rss_mib": {
                "etcd": rss(pids["etcd"]) / 2**20,
                "control_plane": stats1["rss"] / 2**20,
                "envoy": rss(pids["envoy"]) / 2**20,
                "watchers_total": watchers_rss / 2**20,
                "registrars": rss(pids["registrars"]) / 2**20,
            },
            "client_kib_per_watcher": (watchers_rss - rss_base) / max(1, m) / 1024,
        }

    async def _changes(self, etcd: str, admin: str, watchers: list[Child]) -> list[dict[str, Any]]:
        """One probe instance at a time: register, wait until everyone has it, deregister, same."""
        samples: list[dict[str, Any]] = []
        for k in range(self.ns.changes):
            kind = "add" if k % 2 == 0 else "remove"
            name = f"probe-{k // 2}"
            if kind == "add":
                address = f"127.250.{k // 500}.{(k // 2) % 250 + 1}:9"
                probe = Registration(
                    etcd, Instance(service=SERVICE, id=name, address=address), ttl=self.ns.ttl
                )
                began = time.monotonic()
                await probe.start()
                await probe.wait_registered(10)
                want = self.n + 1
            else:
                began = time.monotonic()
                await probe.close()
                want = self.n
            envoy_at = await wait_membership(admin, want, self.ns.change_timeout_s)
            seen = await asyncio.gather(
                *(w.wait_seen(name, kind, self.ns.change_timeout_s) for w in watchers)
            )
            ok = all(s is not None for s in seen)
            samples.append(
                {
                    "kind": kind,
                    "envoy_s": envoy_at - began if envoy_at else None,
                    "watchers_s": max(s["last"] for s in seen if s) - began if ok else None,
                    "first_watcher_s": min(s["first"] for s in seen if s) - began if ok else None,
                }
            )
            await asyncio.sleep(self.ns.gap_s)
        return samples


def _ms(value: float | None) -> str:
    return "missed" if value is None or math.isnan(value) else f"{value * 1e3:.0f}"


def markdown(r: dict[str, Any]) -> str:
    cells = r["cells"]
    lines = [
        f"# Control-plane scale ({r['date']})",
        "",
        f"Machine: {r['machine']}, {r['cpus']} CPUs. Produced by `ocrmesh bench control-plane "
        f"{r['args']}`. Lease mode: **{r['lease_mode']}**; "
        f"xDS: **{'delta' if r['delta_xds'] else 'state of the world'}**.",
        "",
        "Per cell, fresh: etcd (embedded defaults), the control plane in its own process, Envoy 1.40 on ADS,",
        "N stand-in instances registered by registrar processes with the project's registration code",
        "(real leases and keepalives), M `MeshClient`s (one `Discovery` watch each) in watcher processes.",
        f"Changes: {r['changes']} per cell, one at a time (a probe instance registers with its own lease,",
        "then deregisters); p99 is nearest-rank, so with fewer than 100 changes it is the slowest one.",
        "",
        "## Change -> visible (ms)",
        "",
        table(
            [
                "N",
                "M",
                "all watchers p50",
                "all watchers p99",
                "Envoy p50",
                "Envoy p99",
                "both p99",
                "missed",
            ],
            [
                [
                    c["endpoints"],
                    c["watchers"],
                    _ms(c["changes"]["watchers_p50_s"]),
                    _ms(c["changes"]["watchers_p99_s"]),
                    _ms(c["changes"]["envoy_p50_s"]),
                    _ms(c["changes"]["envoy_p99_s"]),
                    _ms(c["changes"]["all_p99_s"]),
                    c["changes"]["missed_by_watchers"] + c["changes"]["missed_by_envoy"],
                ]
                for c in cells
            ],
            "rrrrrrrr",
        ),
        "",
        "## Steady keepalives: CPU (cores, averaged) and etcd requests per second",
        "",
        table(
            [
                "N",
                "M",
                "etcd",
                "control plane",
                "Envoy",
                "watchers",
                "registrars",
                "keepalives/s",
                "etcd msgs/s",
                "load 1m",
            ],
            [
                [
                    c["endpoints"],
                    c["watchers"],
                    *(
                        f"{c['steady']['cores'][k]:.3f}"
                        for k in ("etcd", "control_plane", "envoy", "watchers", "registrars")
                    ),
                    f"{c['steady']['keepalives_per_s']:.0f}",
                    f"{sum(c['steady']['etcd_msgs_per_s'].values()):.0f}",
                    f"{c['steady']['loadavg_1m']:.1f}",
                ]
                for c in cells
            ],
            "rrrrrrrrrr",
        ),
        "",
        "## Control plane per change, burst, memory",
        "",
        table(
            [
                "N",
                "M",
                "CP CPU/change ms",
                "builds/change",
                "build mean ms",
                "build max ms",
                "burst: registered s",
                "burst: Envoy s",
                "burst: watchers s",
                "etcd MiB",
                "CP MiB",
                "Envoy MiB",
                "KiB/watcher",
            ],
            [
                [
                    c["endpoints"],
                    c["watchers"],
                    f"{c['changes']['cp_cpu_per_change_ms']:.1f}",
                    f"{c['changes']['builds_per_change']:.2f}",
                    f"{c['changes']['build_mean_ms']:.1f}",
                    f"{c['changes']['build_max_ms']:.1f}",
                    f"{c['burst']['register_s']:.1f}",
                    "missed" if c["burst"]["envoy_s"] is None else f"{c['burst']['envoy_s']:.1f}",
                    "missed" if c["burst"]["watchers_s"] is None else f"{c['burst']['watchers_s']:.1f}",
                    f"{c['rss_mib']['etcd']:.0f}",
                    f"{c['rss_mib']['control_plane']:.0f}",
                    f"{c['rss_mib']['envoy']:.0f}",
                    f"{c['client_kib_per_watcher']:.0f}",
                ]
                for c in cells
            ],
            "rrrrrrrrrrrrr",
        ),
        "",
        "etcd requests per second by method (steady phase): "
        + "; ".join(
            f"N={c['endpoints']} M={c['watchers']}: "
            + ", ".join(f"{k} {v:.0f}" for k, v in c["steady"]["etcd_msgs_per_s"].items())
            for c in cells
        ),
        "",
    ]
    acceptance = r.get("acceptance")
    if acceptance:
        lines += ["## Acceptance (N=2,000, M=200)", ""]
        lines += [f"- {a['what']}: {a['measured']} -> {'met' if a['met'] else 'NOT met'}" for a in acceptance]
        lines.append("")
    if r.get("plot"):
        lines += [f"![control-plane scale]({r['plot']})", ""]
    return "\n".join(lines)


def acceptance(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cell = next((c for c in cells if c["endpoints"] == 2000 and c["watchers"] == 200), None)
    if cell is None:
        return []
    both = cell["changes"]["all_p99_s"]
    missed = cell["changes"]["missed_by_watchers"] + cell["changes"]["missed_by_envoy"]
    etcd = cell["steady"]["cores"]["etcd"]
    return [
        {
            "what": "a change visible to all watchers and to Envoy, p99 <= 1 s",
            "measured": f"{_ms(both)} ms, {missed} missed",
            "met": bool(both <= 1.0 and missed == 0),
        },
        {
            "what": "etcd <= 0.5 core during steady keepalives",
            "measured": f"{etcd:.3f} cores",
            "met": etcd <= 0.5,
        },
    ]


def plot(cells: list[dict[str, Any]], path: Path, title: str) -> bool:
    """The curve from the smallest to the largest N (cells of the most common M), four panels."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ms = statistics.mode(c["watchers"] for c in cells)
    curve = sorted((c for c in cells if c["watchers"] == ms), key=lambda c: c["endpoints"])
    if not curve:
        return False
    xs = [c["endpoints"] for c in curve]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    for key, label in (("watchers", "all watchers"), ("envoy", "Envoy")):
        for q, style in (("p50", "--"), ("p99", "-")):
            ax.plot(
                xs,
                [1e3 * c["changes"][f"{key}_{q}_s"] for c in curve],
                style,
                marker="o",
                label=f"{label} {q}",
            )
    ax.axhline(1000, color="grey", lw=0.8)
    ax.set(title="change -> visible (ms)", xscale="log", yscale="log", xlabel="endpoints N")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for key in ("etcd", "control_plane", "envoy", "watchers", "registrars"):
        ax.plot(xs, [c["steady"]["cores"][key] for c in curve], marker="o", label=key)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set(title="steady CPU (cores)", xscale="log", xlabel="endpoints N")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    ax.plot(xs, [c["changes"]["cp_cpu_per_change_ms"] for c in curve], marker="o", label="CP CPU per change")
    ax.plot(xs, [c["changes"]["build_mean_ms"] for c in curve], marker="o", label="snapshot build (mean)")
    ax.plot(xs, [c["burst"]["envoy_s"] or math.nan for c in curve], marker="o", label="burst -> Envoy (s)")
    ax.set(title="control plane (ms) and burst (s)", xscale="log", yscale="log", xlabel="endpoints N")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    for key in ("etcd", "control_plane", "envoy"):
        ax.plot(xs, [c["rss_mib"][key] for c in curve], marker="o", label=f"{key} MiB")
    ax.plot(xs, [c["client_kib_per_watcher"] for c in curve], marker="o", label="KiB per watcher")
    ax.set(title="memory", xscale="log", xlabel="endpoints N")
    ax.legend(fontsize=8)
    fig.suptitle(f"{title} (M = {ms} watchers)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def describe_args(ns: argparse.Namespace, grid: list[tuple[int, int]]) -> str:
    """The flags that shaped this run, as one would type them."""
    cells = ",".join(f"{n}x{m}" for n, m in grid)
    words = [f"{cells}", f"--lease-mode {ns.lease_mode}", f"--changes {ns.changes}"]
    words += [f"--steady-s {ns.steady_s:g}", f"--ttl {ns.ttl}"]
    return " ".join(words + (["--delta"] if ns.delta else []))


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_cells(text: str) -> list[tuple[int, int]]:
    """Cells like "2000x500,1000x50" -> [(2000, 500), (1000, 50)]."""
    cells = []
    for item in text.split(","):
        if item.strip():
            n, _, m = item.strip().partition("x")
            cells.append((int(n), int(m)))
    return cells


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("--endpoints", type=parse_ints, default=[10, 100, 1000, 2000], help="N values")
    parser.add_argument("--watchers", type=parse_ints, default=[200], help="M values (crossed with N)")
    parser.add_argument(
        "--extra-cells",
        type=parse_cells,
        default=[(2000, 500)],
        help="more NxM cells, e.g. 2000x500 ('' for none)",
    )
    parser.add_argument("--lease-mode", choices=("per-key", "shared"), default="shared",
                        help="stand-ins: one lease per instance, or one per registrar process")  # fmt: skip
    parser.add_argument("--delta", action="store_true", help="Envoy on incremental (delta) xDS")
    parser.add_argument("--changes", type=int, default=20, help="changes per cell (alternating add/remove)")
    parser.add_argument("--steady-s", type=float, default=10.0, help="seconds of steady keepalives per cell")
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause after the burst")
    parser.add_argument("--gap-s", type=float, default=0.2, help="pause between changes")
    parser.add_argument(
        "--change-timeout-s", type=float, default=15.0, help="a change not seen by then is missed"
    )
    parser.add_argument("--ttl", type=int, default=5, help="lease TTL of every registration")
    parser.add_argument("--registrar-procs", type=int, default=4, help="processes holding the stand-ins")
    parser.add_argument("--watcher-procs", type=int, default=2, help="processes holding the watchers")
    parser.add_argument(
        "--quick", action="store_true", help="N=10,100 M=20, 6 changes, 3 s steady (a smoke run)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for control-plane-DATE.{md,json,png}"
    )
    parser.add_argument(
        "--fast-raft", action="store_true", help="etcd elects itself in ~0.1 s, not ~1 s (for tests)"
    )
    parser.add_argument("--stem", default="", help="report file name (default control-plane-DATE)")


def run(ns: argparse.Namespace) -> int:
    if ns.quick:
        ns.endpoints, ns.watchers, ns.extra_cells = [10, 100], [20], []
        ns.changes, ns.steady_s, ns.settle_s = 6, 3.0, 1.0
    grid = [(n, m) for n in ns.endpoints for m in ns.watchers] + list(ns.extra_cells)
    grid = list(dict.fromkeys(grid))
    if not grid or min(min(c) for c in grid) < 1 or ns.changes < 2:
        print("control-plane bench: N, M must be positive and --changes at least 2", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    result = run_stoppable(measure(ns, grid, console))
    stem = ns.stem or f"control-plane-{datetime.now(UTC):%Y-%m-%d}"
    png = ns.out / f"{stem}.png"
    ns.out.mkdir(parents=True, exist_ok=True)
    mode = f"{ns.lease_mode} leases, {'delta' if ns.delta else 'SotW'} xDS"
    if plot(result["cells"], png, f"ocrmesh control plane, {mode}"):
        result["plot"] = png.name
    text = markdown(result)
    write_report(ns.out, stem, result, text)
    (ns.out / f"{ns.stem or 'control-plane'}.partial.json").unlink(missing_ok=True)
    console.print(f"wrote {ns.out / stem}.md, .json" + (", .png" if result.get("plot") else ""))
    print(text)
    return 0 if all(not c.get("error") for c in result["cells"]) else 1


async def measure(ns: argparse.Namespace, grid: list[tuple[int, int]], console: Console) -> dict[str, Any]:
    # SIGTERM (and SIGINT, which a background job ignores) stop the sweep with every child stopped.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        if main is not None:
            loop.add_signal_handler(signum, main.cancel)
    cells: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="control-plane-bench-") as tmp,
        Progress(*columns, console=console, disable=not console.is_terminal) as bar,
    ):
        task = bar.add_task("control plane", total=len(grid))
        for i, (n, m) in enumerate(grid):

            def step(what: str, n: int = n, m: int = m) -> None:
                bar.update(task, description=f"N={n} M={m}: {what}")

            try:
                cell = await Cell(ns, n, m, Path(tmp) / f"cell-{i}-{n}x{m}", step).run()
            except (RuntimeError, OSError, TimeoutError) as exc:
                console.print(f"[red]N={n} M={m} failed: {exc}")
                cell = {"endpoints": n, "watchers": m, "error": str(exc)}
            else:
                c = cell["changes"]
                console.print(
                    f"N={n} M={m}: watchers p99 {_ms(c['watchers_p99_s'])} ms, "
                    f"Envoy p99 {_ms(c['envoy_p99_s'])} ms, etcd {cell['steady']['cores']['etcd']:.2f} "
                    f"cores, CP {c['cp_cpu_per_change_ms']:.1f} ms/change"
                )
            cells.append(cell)
            bar.advance(task)
            if ns.out is not None:  # what is measured so far survives an interrupted sweep
                partial = ns.out / f"{ns.stem or 'control-plane'}.partial.json"
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(cells, indent=1) + "\n")
    good = [c for c in cells if not c.get("error")]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "cpus": psutil.cpu_count(),
        "args": describe_args(ns, grid),
        "lease_mode": ns.lease_mode,
        "delta_xds": ns.delta,
        "changes": ns.changes,
        "cells": good,
        "failed_cells": [c for c in cells if c.get("error")],
        "acceptance": acceptance(good),
    }
