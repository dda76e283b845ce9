"""`ocrmesh bench hardening`: what issue 17's abuse protections cost Recognize, hardened vs unhardened.

Two local meshes of the same build, as the default sweep runs them (etcd, 1 auth, 1 OCR instance
with `--workers` worker, the gateway; tokens required; no mTLS), are up side by side: one with the
defaults (hardened), one whose OCR instance and gateway run `--bench-unhardened` (no revoked-session
polling or checks, no cap of streams per connection; Envoy without overload manager, upstream
keepalive, per-route buffer limits, header-only tokens, query-free access log or x-forwarded-for).
For every sweep cell (path x clients) each round measures both arms, alternating which goes first,
with the sweep's well-behaved clients (RetryInfo honoured) and its default image. The checks that
cannot be switched off are timed in-process per call (bench/studies/hardening_percall.py). The
Recognize cells scatter too much per round to show a 3 % bound, so an edge probe
(bench/studies/hardening_edge.py) measures the mesh CPU the hardening adds per call on calls that
every hardened layer handles and no worker runs, and sets it against the CPU of a Recognize call.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.durations import parse_duration
from bench.machine_facts import cpu_model
from bench.paired_arms import paired_ratios, pooled_rate
from bench.process_cpu import CLIENT, CpuMeter, CpuUse
from bench.process_rss import RssSampler
from bench.report_files import run_study, table
from bench.studies.hardening_edge import (
    add_edge_arguments,
    edge_report,
    markdown_edge,
    measure_edge,
    probe_payload,
)
from bench.studies.hardening_percall import core_share, measure_per_call
from bench.sweep import DEFAULT_IMAGE
from bench.sweep_paths import Account, bearer_metadata, new_accounts, register, run_path_load
from bench.sweep_plan import counts_type
from bench.sweep_report import summarize
from deploy.supervisor import LocalMesh, MeshPorts
from mesh import __version__

ARMS = ("hardened", "unhardened")
PATHS = ("direct", "gateway")
UNHARDENED_FLAG = "--bench-unhardened"
GOAL_RATIO = 0.97
"""Issue 17: the hardening may cost at most 3 % of throughput (hardened/unhardened OK/s >= 0.97)."""
NOT_SWITCHED = (
    "token checked from the metadata before the body is read: a call with a valid token takes the "
    "same handler as before (the refusal path alone changed), so there is nothing to switch off",
    "INVALID_ARGUMENT for malformed messages: the request parser's wrapper runs in both arms; "
    "timed in-process below",
    "RecognizeStream caps (uploads per caller, idle and total upload time): not on the Recognize path",
    "CORS allow-list: gRPC clients send no Origin, so the filter does nothing on these calls",
    "auth's revoked-session publisher (a database read a second) and the BFF's limits: not per "
    "Recognize call, and the auth instance runs alike in both meshes",
)


def mesh_cpu_s(use: CpuUse) -> float:
    """CPU seconds of every measured process tree but the client (the load generator) over the span."""
    return sum(cores for name, cores in use.cores.items() if name != CLIENT) * use.seconds


def run_summary(report: dict[str, Any], peak_rss: int, cpu_s: float) -> dict[str, Any]:
    """One arm's run of one cell: OK/s, failures (every status but OK), p95 of OK calls, peak RSS,
    the mesh's CPU seconds (the sweep's own `summarize` reads the ghz report)."""
    s = summarize(report)
    return {
        "calls": s["calls"],
        "ok": s["ok"],
        "seconds": s["seconds"],
        "ok_per_s": s["ok_per_s"],
        "failures": s["calls"] - s["ok"],
        "status_codes": {str(k): int(v) for k, v in s["status_codes"].items()},
        "p95_s": s["p95_ok_ms"] / 1e3,
        "peak_rss_mib": peak_rss / 2**20,
        "mesh_cpu_s": cpu_s,
    }


def cell_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-round hardened/unhardened OK/s ratios, their median and range, the pooled ratio, and the
    mesh's CPU seconds per OK call (both arms pooled)."""
    ok = sum(r["ok"] for arm in ARMS for r in runs[arm])
    return {
        **paired_ratios(runs["hardened"], runs["unhardened"], rate="ok_per_s", count="ok"),
        "mesh_cpu_s_per_ok": sum(r.get("mesh_cpu_s", 0.0) for arm in ARMS for r in runs[arm]) / ok
        if ok
        else 0.0,
        "arms": {
            arm: {
                "ok_per_s": pooled_rate(runs[arm], "ok"),
                "failures": sum(r["failures"] for r in runs[arm]),
                "p95_s_median": statistics.median(r["p95_s"] for r in runs[arm]) if runs[arm] else 0.0,
                "peak_rss_mib": max((r["peak_rss_mib"] for r in runs[arm]), default=0.0),
            }
            for arm in ARMS
        },
    }


def _envoy_config(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(admin_url.rstrip("/") + "/config_dump", timeout=10) as reply:
        return dict(json.load(reply))


def envoy_facts(dump: dict[str, Any]) -> dict[str, bool]:
    """From Envoy's /config_dump: is there an overload manager, and do its OCR/auth clusters ping?"""
    facts = {"overload_manager": False, "upstream_keepalive": False}
    for config in dump.get("configs", []):
        kind = str(config.get("@type", ""))
        if kind.endswith("BootstrapConfigDump"):
            facts["overload_manager"] = "overload_manager" in config.get("bootstrap", {})
        if kind.endswith("ClustersConfigDump"):
            dynamic = json.dumps(config.get("dynamic_active_clusters", []))
            facts["upstream_keepalive"] = "connection_keepalive" in dynamic
    return facts


async def arm_facts(mesh: LocalMesh) -> dict[str, Any]:
    """What each process of an arm says it runs: proof the unhardened arm really is unhardened."""
    facts: dict[str, Any] = {"ocr_hardened": [c.info.get("hardened") for c in mesh.children("ocr")]}
    for gateway in mesh.children("gateway"):
        facts["gateway_hardened"] = gateway.info.get("hardened")
        facts["envoy"] = envoy_facts(await asyncio.to_thread(_envoy_config, str(gateway.info["admin"])))
    return facts


def _mesh(ns: argparse.Namespace, workdir: Path, arm: str) -> LocalMesh:
    extra = (UNHARDENED_FLAG,) if arm == "unhardened" else ()
    return LocalMesh(
        ocr=1,
        auth=1,
        gateway="gateway" in ns.path,
        bff=False,
        workers=ns.workers,
        data_dir=workdir / arm,
        ports=MeshPorts.ephemeral(),
        ocr_args=extra,
        gateway_args=extra,
        own_sessions=False,  # one session with the load generator, as the sweep runs it
    )


async def _start(meshes: dict[str, LocalMesh]) -> None:
    results = await asyncio.gather(*(m.start() for m in meshes.values()), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise RuntimeError(f"a mesh did not start: {result}") from result


async def measure(ns: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    image = await asyncio.to_thread(ns.image.read_bytes)
    payload = probe_payload(len(image))
    cells = [] if ns.edge_only else [(path, c) for path in ns.path for c in ns.concurrency]
    meshes = {arm: _mesh(ns, workdir, arm) for arm in ARMS}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        f"{path}-c{c}": {arm: [] for arm in ARMS} for path, c in cells
    }
    edge_runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    console.print(f"starting two meshes (hardened, unhardened) in {workdir} ...")
    try:
        await _start(meshes)
        facts = {arm: await arm_facts(mesh) for arm, mesh in meshes.items()}
        accounts: dict[str, Account] = {}
        for arm, mesh in meshes.items():
            accounts[arm] = new_accounts(1)[0]
            await register(mesh.addresses("auth")[0], accounts[arm])
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not ns.progress,
        ) as progress:
            edge_total = ns.edge_rounds * len(ns.path) * len(ARMS)
            bar = progress.add_task("hardening", total=ns.rounds * len(cells) * len(ARMS) + edge_total)

            def advance(description: str) -> None:
                progress.update(bar, description=description, advance=1)

            if ns.edge_rounds > 0:
                edge_runs = await measure_edge(
                    meshes,
                    accounts,
                    ns.path,
                    rounds=ns.edge_rounds,
                    duration_s=ns.edge_duration_s,
                    concurrency=ns.edge_concurrency,
                    payload=payload,
                    filename=ns.image.name,
                    advance=advance,
                )
            for round_ in range(ns.rounds):
                order = ARMS if round_ % 2 == 0 else ARMS[::-1]
                for path, c in cells:
                    for arm in order:
                        key = f"{path}-c{c}"
                        progress.update(bar, description=f"round {round_ + 1}/{ns.rounds} {key} {arm}")
                        mesh = meshes[arm]
                        common: dict[str, Any] = {
                            "concurrency": c,
                            "image": image,
                            "filename": ns.image.name,
                            "metadata": await bearer_metadata(mesh, accounts[arm]),
                        }
                        if ns.warmup_s > 0:
                            await run_path_load(
                                mesh, path, duration_s=ns.warmup_s, name=f"{key} warm-up", **common
                            )
                        with RssSampler(mesh.pids()) as rss, CpuMeter(mesh.pids()) as cpu:
                            result = await run_path_load(
                                mesh, path, duration_s=ns.duration_s, name=f"{key} {arm}", **common
                            )
                        assert cpu.use is not None
                        runs[key][arm].append(run_summary(result.report, rss.peak, mesh_cpu_s(cpu.use)))
                        progress.advance(bar)
    finally:
        await asyncio.gather(*(m.stop() for m in meshes.values()))
    per_call = await asyncio.to_thread(measure_per_call, image, ns.image.name)
    summaries = {key: {**cell_summary(by_arm), "runs": by_arm} for key, by_arm in runs.items()}
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "ocrmesh": __version__,
        "cpu_model": cpu_model(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, grpcio {grpc.__version__}",
        "image": ns.image.name,
        "workers": ns.workers,
        "rounds": ns.rounds,
        "duration_s": ns.duration_s,
        "warmup_s": ns.warmup_s,
        "paths": list(ns.path),
        "concurrency": list(ns.concurrency),
        "arm_facts": facts,
        "edge_only": ns.edge_only,
        "cells": summaries,
        "edge": edge_report(edge_runs, summaries, ns, len(payload)) if edge_runs else None,
        "per_call": per_call,
        "not_switched": list(NOT_SWITCHED),
        "goal_ratio": GOAL_RATIO,
    }


def _fmt_ratios(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _recognize_section(r: dict[str, Any]) -> list[str]:
    if not r["cells"]:
        return ["## Recognize throughput", "", "Not measured (`--edge-only`).", ""]
    rows = []
    for key, cell in r["cells"].items():
        h, u = cell["arms"]["hardened"], cell["arms"]["unhardened"]
        met = "met" if min(cell["median_ratio"], cell["pooled_ratio"]) >= r["goal_ratio"] else "NOT met"
        rows.append(
            [
                key,
                f"{h['ok_per_s']:.2f}",
                f"{u['ok_per_s']:.2f}",
                f"**{cell['median_ratio']:.3f}** ({cell['min_ratio']:.3f}-{cell['max_ratio']:.3f})",
                f"{cell['pooled_ratio']:.3f}",
                _fmt_ratios(cell["ratios"]),
                f"{h['failures']} / {u['failures']}",
                f"{h['p95_s_median']:.2f} / {u['p95_s_median']:.2f}",
                f"{h['peak_rss_mib']:.0f} / {u['peak_rss_mib']:.0f}",
                f"{cell.get('mesh_cpu_s_per_ok', 0.0):.3f}",
                met,
            ]
        )
    return [
        f"## Recognize throughput, hardened/unhardened (goal >= {r['goal_ratio']})",
        "",
        table(
            [
                "cell",
                "hardened OK/s",
                "unhardened OK/s",
                "ratio median (min-max)",
                "pooled ratio",
                "per round",
                "failures h / u",
                "p95 s h / u",
                "peak RSS MiB h / u",
                "mesh CPU s per OK call",
                "goal",
            ],
            rows,
            "lrrrrllllrl",
        ),
        "",
        "OK/s pooled over the rounds; p95 of OK calls, median over rounds; peak RSS of the whole "
        "mesh (etcd, auth, OCR and its worker, gateway) during the measured runs; mesh CPU: user + "
        "system CPU seconds of those processes over the measured runs per OK call, both arms pooled; "
        "failures: every status but OK.",
        "",
        "Both meshes stay up through every run, so their background work (the hardened OCR "
        "instance polling revoked sessions twice a second, Envoy's upstream PINGs every 2 s) falls "
        "on both arms' runs alike: the ratios measure what the protections cost per call.",
        "",
    ]


def markdown(r: dict[str, Any]) -> str:
    pc = r["per_call"]
    best_ok = max((c["arms"]["hardened"]["ok_per_s"] for c in r["cells"].values()), default=0.0)
    per_call_rows = [
        [name, f"{t['on']:.0f}", f"{t['off']:.0f}", f"{pc['added_ns'][name]:.0f}"]
        for name, t in pc["timings_ns"].items()
    ]
    facts_rows = [
        [
            arm,
            str(f.get("ocr_hardened")),
            str(f.get("gateway_hardened", "-")),
            str(f.get("envoy", {}).get("overload_manager", "-")),
            str(f.get("envoy", {}).get("upstream_keepalive", "-")),
        ]
        for arm, f in r["arm_facts"].items()
    ]
    return "\n".join(
        [
            f"# Hardening benchmark ({r['date']})",
            "",
            f"Machine: {r['machine']} (CPU model: {r['cpu_model']}). ocrmesh {r['ocrmesh']}.",
            "",
            "Two local meshes as the default sweep runs them (etcd, 1 auth, 1 OCR instance with "
            f"{r['workers']} worker, the gateway; tokens required; no mTLS), side by side: **hardened** "
            "(the defaults) and **unhardened** (`ocrmesh serve ocr --bench-unhardened` and `ocrmesh "
            "serve gateway --bench-unhardened`). "
            + (
                "Recognize cells not measured (`--edge-only`): the edge probe alone. "
                if not r["cells"]
                else f"Recognize with `{r['image']}`, well-behaved clients (RetryInfo honoured), "
                f"{r['rounds']} rounds of {r['duration_s']:g} s per arm and cell after {r['warmup_s']:g} s "
                "warm-up, the first arm alternating by round. "
            )
            + "Produced by `ocrmesh bench hardening`.",
            "",
            "## What each arm ran",
            "",
            table(
                ["arm", "OCR hardened", "gateway hardened", "Envoy overload manager", "upstream keepalive"],
                facts_rows,
            ),
            "",
            *_recognize_section(r),
            *markdown_edge(r.get("edge")),
            "## Always-on checks, timed in-process per call",
            "",
            table(["check", "on, ns/call", "off, ns/call", "added ns/call"], per_call_rows, "lrrr"),
            "",
            f"Together {pc['total_added_ns']:.0f} ns per call"
            + (
                f": at the highest hardened rate above ({best_ok:.2f} OK/s) that is "
                f"{100 * core_share(pc['total_added_ns'], best_ok):.5f} % of one core"
                if best_ok
                else ""
            )
            + f" (best of {pc['repeats']} runs of {pc['calls']} calls; "
            f"{pc['revoked_sessions_held']} revoked sessions held).",
            "",
            "## Not switched off",
            "",
            *(f"- {item}" for item in r["not_switched"]),
            "",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument(
        "--image", type=Path, default=DEFAULT_IMAGE, help="image sent to Recognize (the sweep's default)"
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=counts_type("--concurrency"),
        default=[4, 16, 64],
        help="closed-loop client counts (default 4,16,64: the default sweep's cells the hardening touches)",
    )
    parser.add_argument(
        "--path",
        type=_paths,
        default=list(PATHS),
        help="ways in, comma-separated: direct (mesh client), gateway (Envoy) (default direct,gateway)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; each measures both arms, first arm alternating"
    )
    parser.add_argument(
        "-z", "--duration", default="20s", help="measured load per arm, cell and round (default 20s)"
    )
    parser.add_argument("--warmup", default="3s", help="unmeasured load before each run (default 3s)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of each OCR instance")
    add_edge_arguments(parser)
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/benchmarks") / f"hardening-{dt.date.today().isoformat()}",
        help="write OUT.json and OUT.md (default docs/benchmarks/hardening-DATE)",
    )


def _paths(text: str) -> list[str]:
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PATHS]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(PATHS)}")
    return [p for p in PATHS if p in wanted]


def run(ns: argparse.Namespace) -> int:
    if not ns.image.is_file():
        print(f"hardening bench: no image at {ns.image}; pass --image PATH", file=sys.stderr)
        return 2
    try:
        ns.duration_s, ns.warmup_s = parse_duration(ns.duration), parse_duration(ns.warmup)
        ns.edge_duration_s = parse_duration(ns.edge_duration)
    except ValueError as exc:
        print(f"hardening bench: {exc}", file=sys.stderr)
        return 2
    if min(ns.rounds, ns.workers) < 1 or ns.duration_s <= 0 or ns.warmup_s < 0:
        print("hardening bench: --rounds and --workers must be positive, --duration too", file=sys.stderr)
        return 2
    if ns.edge_rounds < 0 or ns.edge_concurrency < 1 or ns.edge_duration_s <= 0:
        print(
            "hardening bench: --edge-rounds must be >= 0, --edge-concurrency and --edge-duration positive",
            file=sys.stderr,
        )
        return 2
    if ns.edge_only and ns.edge_rounds == 0:
        print("hardening bench: --edge-only with --edge-rounds 0 measures nothing", file=sys.stderr)
        return 2
    if ns.recognize_cpu_s is not None and ns.recognize_cpu_s <= 0:
        print("hardening bench: --recognize-cpu-s must be positive", file=sys.stderr)
        return 2
    return 0 if run_study("hardening", ns, measure, markdown) is not None else 1
