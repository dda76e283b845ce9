"""The edge probe of `ocrmesh bench hardening`: mesh CPU per call of calls refused at the OCR guardrails."""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.paired_arms import paired_ratios, pooled_rate
from bench.process_cpu import CLIENT, CpuMeter, CpuUse
from bench.report_files import table
from bench.sweep_paths import Account, bearer_metadata, run_path_load
from bench.sweep_report import summarize
from deploy.supervisor import LocalMesh
from ocr_svc.guardrails import ImageRejected, Limits, Reason, inspect

EXPECTED_STATUS = "InvalidArgument"  # ghz's (Go's) name for INVALID_ARGUMENT
EXPECTED_SHARE = 0.99
"""A run with fewer of its calls answered INVALID_ARGUMENT measured something else: an error."""
PAYLOAD_SEED = 17
WARMUP_S = 1.0  # once per arm and path: channels, discovery and the cached token before round 1


def probe_payload(size: int, seed: int = PAYLOAD_SEED) -> bytes:
    """`size` seeded random bytes that the OCR service's own header check calls NOT_AN_IMAGE."""
    data = random.Random(seed).randbytes(size)
    try:
        inspect(data, Limits())
    except ImageRejected as exc:
        if exc.reason == Reason.NOT_AN_IMAGE:
            return data
        raise ValueError(f"the probe payload is refused as {exc.reason}, not NOT_AN_IMAGE") from None
    raise ValueError("the probe payload reads as an image: choose another seed")


def cpu_by_process(use: CpuUse, arm: str) -> dict[str, float]:
    """CPU seconds of each process tree of `arm` (meter names `arm:process`) over the span."""
    prefix = f"{arm}:"
    return {
        name.removeprefix(prefix): cores * use.seconds
        for name, cores in use.cores.items()
        if name.startswith(prefix)
    }


def probe_run(report: Mapping[str, Any], use: CpuUse, arm: str) -> dict[str, Any]:
    """One arm's probe run: calls/s, status codes and the CPU of its mesh, of the idle other mesh
    and of the client."""
    s = summarize(report)
    by_process = cpu_by_process(use, arm)
    mesh_cpu_s = sum(by_process.values())
    others = sum(
        cores for name, cores in use.cores.items() if name != CLIENT and not name.startswith(f"{arm}:")
    )
    calls = int(s["calls"])
    expected = int(s["status_codes"].get(EXPECTED_STATUS, 0))
    return {
        "calls": calls,
        "seconds": s["seconds"],
        "calls_per_s": calls / s["seconds"] if s["seconds"] else 0.0,
        "status_codes": {str(k): int(v) for k, v in s["status_codes"].items()},
        "expected_share": expected / calls if calls else 0.0,
        "mesh_cpu_s": mesh_cpu_s,
        "cpu_us_per_call": 1e6 * mesh_cpu_s / calls if calls else 0.0,
        "cpu_us_per_call_by_process": {p: 1e6 * v / calls if calls else 0.0 for p, v in by_process.items()},
        "other_mesh_cores": others,
        "client_cores": use.cores.get(CLIENT, 0.0),
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def run_errors(path: str, arm: str, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What makes a probe run no measure of the hardened path: no calls, or too few INVALID_ARGUMENT."""
    found = []
    for i, run in enumerate(runs, 1):
        if run["calls"] == 0 or run["expected_share"] < EXPECTED_SHARE:
            found.append(
                f"{path} {arm} round {i}: {run['calls']} calls, {100 * run['expected_share']:.1f} % "
                f"INVALID_ARGUMENT (status codes {run['status_codes']})"
            )
    return found


def edge_summary(path: str, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """One path's probe: per-round calls/s ratios and paired CPU differences (hardened - unhardened),
    their medians and ranges, pooled figures, and per arm its CPU per call, status codes and idle
    background (its CPU while the other arm ran)."""
    hard, soft = runs["hardened"], runs["unhardened"]
    extra = [h["cpu_us_per_call"] - s["cpu_us_per_call"] for h, s in zip(hard, soft, strict=True)]

    def arm_figures(arm: str, other: str) -> dict[str, Any]:
        mine = runs[arm]
        calls = sum(r["calls"] for r in mine)
        codes: dict[str, int] = {}
        for r in mine:
            for code, n in r["status_codes"].items():
                codes[code] = codes.get(code, 0) + n
        processes = sorted({p for r in mine for p in r["cpu_us_per_call_by_process"]})
        return {
            "calls_per_s": pooled_rate(mine, "calls"),
            "cpu_us_per_call_median": _median([r["cpu_us_per_call"] for r in mine]),
            "cpu_us_per_call_pooled": 1e6 * sum(r["mesh_cpu_s"] for r in mine) / calls if calls else 0.0,
            "cpu_us_per_call_by_process": {
                p: _median([r["cpu_us_per_call_by_process"].get(p, 0.0) for r in mine]) for p in processes
            },
            "idle_background_cores": _median([r["other_mesh_cores"] for r in runs[other]]),
            "status_codes": dict(sorted(codes.items())),
        }

    return {
        **paired_ratios(hard, soft, rate="calls_per_s", count="calls"),
        "extra_us_per_call": extra,
        "extra_us_per_call_median": _median(extra),
        "extra_us_per_call_min": min(extra, default=0.0),
        "extra_us_per_call_max": max(extra, default=0.0),
        "arms": {
            "hardened": arm_figures("hardened", "unhardened"),
            "unhardened": arm_figures("unhardened", "hardened"),
        },
        "errors": run_errors(path, "hardened", hard) + run_errors(path, "unhardened", soft),
    }


def throughput_bound(extra_us_per_call: float, recognize_cpu_s: float) -> float:
    """The largest share of CPU-bound Recognize throughput that `extra_us_per_call` µs more CPU per
    call can cost: with C CPU seconds a call, cores / (C + x) over cores / C is 1 - x / (C + x), and
    x / (C + x) <= x / C; a negative difference costs nothing."""
    if recognize_cpu_s <= 0:
        raise ValueError("the CPU per Recognize call must be positive")
    return max(0.0, extra_us_per_call) * 1e-6 / recognize_cpu_s


def recognize_cpu_s(cells: Mapping[str, Mapping[str, Any]], path: str) -> float | None:
    """The smallest whole-mesh CPU seconds per OK Recognize call among `path`'s cells (both arms
    pooled; the smallest gives the largest bound), or None without such cells."""
    per_call = [
        cell["mesh_cpu_s_per_ok"]
        for key, cell in cells.items()
        if key.startswith(f"{path}-") and cell.get("mesh_cpu_s_per_ok", 0.0) > 0
    ]
    return min(per_call, default=None)


async def measure_edge(
    meshes: Mapping[str, LocalMesh],
    accounts: Mapping[str, Account],
    paths: Sequence[str],
    *,
    rounds: int,
    duration_s: float,
    concurrency: int,
    payload: bytes,
    filename: str,
    advance: Callable[[str], None],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """`rounds` rounds of closed-loop probe runs per path, each measuring every arm of `meshes` (the
    first arm alternating by round) with the CPU of both meshes' process trees; runs by path, arm."""
    arms = tuple(meshes)
    pids = {f"{arm}:{name}": pid for arm, mesh in meshes.items() for name, pid in mesh.pids().items()}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {path: {arm: [] for arm in arms} for path in paths}
    common: dict[str, Any] = {"concurrency": concurrency, "image": payload, "filename": filename}
    metadata = {arm: await bearer_metadata(mesh, accounts[arm]) for arm, mesh in meshes.items()}
    for path in paths:
        for arm, mesh in meshes.items():
            await run_path_load(
                mesh, path, duration_s=WARMUP_S, name=f"edge {path} warm-up", metadata=metadata[arm], **common
            )
    for round_ in range(rounds):
        order = arms if round_ % 2 == 0 else arms[::-1]
        metadata = {arm: await bearer_metadata(meshes[arm], accounts[arm]) for arm in arms}  # tokens age
        for path in paths:
            for arm in order:
                advance(f"edge round {round_ + 1}/{rounds} {path} {arm}")
                with CpuMeter(pids) as meter:
                    result = await run_path_load(
                        meshes[arm],
                        path,
                        duration_s=duration_s,
                        name=f"edge {path} {arm}",
                        metadata=metadata[arm],
                        **common,
                    )
                assert meter.use is not None
                runs[path][arm].append(probe_run(result.report, meter.use, arm))
    return runs


def edge_report(
    runs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    cells: Mapping[str, Mapping[str, Any]],
    ns: argparse.Namespace,
    payload_bytes: int,
) -> dict[str, Any]:
    """The probe's part of the report: per path its summary, runs, the CPU per Recognize call it is
    set against (from this run's cells, else --recognize-cpu-s) and the bound that gives."""
    paths: dict[str, Any] = {}
    for path, by_arm in runs.items():
        summary = edge_summary(path, by_arm)
        measured = recognize_cpu_s(cells, path)
        cpu_s = measured if measured is not None else ns.recognize_cpu_s
        source = "Recognize cells of this run" if measured is not None else "--recognize-cpu-s"
        bound: dict[str, Any] | None = None
        if cpu_s:
            bound = {
                "recognize_cpu_s": cpu_s,
                "source": source,
                "median": throughput_bound(summary["extra_us_per_call_median"], cpu_s),
                "worst_round": throughput_bound(summary["extra_us_per_call_max"], cpu_s),
            }
        paths[path] = {**summary, "bound": bound, "runs": by_arm}
    return {
        "rounds": ns.edge_rounds,
        "duration_s": ns.edge_duration_s,
        "concurrency": ns.edge_concurrency,
        "payload_bytes": payload_bytes,
        "payload": f"random.Random({PAYLOAD_SEED}).randbytes(size): NOT_AN_IMAGE",
        "expected_share": EXPECTED_SHARE,
        "paths": paths,
        "errors": [e for p in paths.values() for e in p["errors"]],
    }


def _codes(codes: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in codes.items()) or "none"


def markdown_edge(e: dict[str, Any] | None) -> list[str]:
    """The report's edge-probe section (a line saying it was skipped when `e` is None)."""
    if e is None:
        return ["## Edge probe", "", "Skipped (`--edge-rounds 0`).", ""]
    rate_rows, cpu_rows, process_rows = [], [], []
    for path, p in e["paths"].items():
        h, u = p["arms"]["hardened"], p["arms"]["unhardened"]
        rate_rows.append(
            [
                path,
                f"{h['calls_per_s']:.0f}",
                f"{u['calls_per_s']:.0f}",
                f"**{p['median_ratio']:.3f}** ({p['min_ratio']:.3f}-{p['max_ratio']:.3f})",
                f"{p['pooled_ratio']:.3f}",
                ", ".join(f"{v:.3f}" for v in p["ratios"]),
                f"{_codes(h['status_codes'])} / {_codes(u['status_codes'])}",
            ]
        )
        b = p["bound"]
        cpu_rows.append(
            [
                path,
                f"{h['cpu_us_per_call_median']:.0f}",
                f"{u['cpu_us_per_call_median']:.0f}",
                f"**{p['extra_us_per_call_median']:+.0f}** "
                f"({p['extra_us_per_call_min']:+.0f} to {p['extra_us_per_call_max']:+.0f})",
                f"{b['recognize_cpu_s']:.3f} ({b['source']})" if b else "not measured",
                f"**{100 * b['median']:.3f} %** ({100 * b['worst_round']:.3f} %)" if b else "-",
                f"{1e3 * h['idle_background_cores']:.1f} / {1e3 * u['idle_background_cores']:.1f}",
            ]
        )
        for proc in sorted({*h["cpu_us_per_call_by_process"], *u["cpu_us_per_call_by_process"]}):
            hp = h["cpu_us_per_call_by_process"].get(proc, 0.0)
            up = u["cpu_us_per_call_by_process"].get(proc, 0.0)
            process_rows.append([path, proc, f"{hp:.0f}", f"{up:.0f}", f"{hp - up:+.0f}"])
    errors = [f"- **ERROR** {err}" for err in e["errors"]]
    return [
        "## Edge probe: every hardened layer, no worker",
        "",
        f"Closed-loop Recognize calls from {e['concurrency']} clients carrying {e['payload_bytes']} "
        "bytes (the image's size) of seeded random bytes that no image format recognises, with a valid "
        "bearer token, so every hardened layer runs (Envoy: overload manager, per-route buffer limits, "
        "header-only tokens, access log; OCR: token check with revoked sessions, the MALFORMED_MESSAGE "
        "parse wrapper, the stream cap) and the OCR instance answers INVALID_ARGUMENT (NOT_AN_IMAGE) "
        f"from its header check, before admission, with no worker. {e['rounds']} rounds of "
        f"{e['duration_s']:g} s per arm and path, the first arm alternating by round, after "
        f"{WARMUP_S:g} s unmeasured per arm and path. A run with under {100 * e['expected_share']:.0f} % "
        "INVALID_ARGUMENT answers is listed as an error below.",
        "",
        *([*errors, ""] if errors else []),
        "### Calls/s, hardened/unhardened",
        "",
        table(
            [
                "path",
                "hardened calls/s",
                "unhardened calls/s",
                "ratio median (min-max)",
                "pooled ratio",
                "per round",
                "status codes h / u",
            ],
            rate_rows,
            "lrrrrll",
        ),
        "",
        "### Mesh CPU per call, and the bound it gives on Recognize",
        "",
        table(
            [
                "path",
                "hardened µs/call",
                "unhardened µs/call",
                "extra µs/call, median (min to max)",
                "CPU s per Recognize call",
                "Recognize throughput cost at most, median (worst round)",
                "idle background ms CPU/s h / u",
            ],
            cpu_rows,
            "lrrrrrr",
        ),
        "",
        "Mesh CPU: user + system CPU seconds of the arm's process trees (etcd, auth, OCR with its idle "
        "worker, gateway with Envoy) over the run, divided by its calls; the load generator is not "
        "counted. µs/call are medians over rounds; the extra is the median (and range) of each round's "
        "hardened - unhardened difference, the two arms of a round having run back to back. Idle "
        "background: an arm's mesh CPU while the other arm ran (the hardened OCR instance polls revoked "
        "sessions, Envoy PINGs its upstreams); it is part of each arm's µs/call while it runs.",
        "",
        "How the bound is derived: on this 2-core machine Recognize throughput is CPU-bound, so with C "
        "CPU seconds per Recognize call, x more per call turns cores/C calls a second into "
        "cores/(C + x): a loss of x/(C + x), at most x/C. C is the whole mesh's CPU seconds per OK call "
        "of the Recognize cells of this run (the smallest among a path's cells, both arms pooled), or "
        "`--recognize-cpu-s` without them. The hardened layers do the same per-call work on these "
        "probes as on a real image of the same size (the body is buffered and parsed, the token "
        "checked); only the worker is skipped, and it is not hardened. The calls/s ratio above is a "
        "stricter test still: those calls are about a thousand times cheaper, so the same extra CPU is "
        "a far larger share of them.",
        "",
        "### Mesh CPU per call by process (median over rounds)",
        "",
        table(
            ["path", "process", "hardened µs/call", "unhardened µs/call", "difference"], process_rows, "llrrr"
        ),
        "",
    ]


def add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--edge-rounds",
        type=int,
        default=10,
        help="rounds of the edge probe (NOT_AN_IMAGE calls through every hardened layer); 0 skips it",
    )
    parser.add_argument("--edge-duration", default="5s", help="edge probe load per arm, path and round")
    parser.add_argument("--edge-concurrency", type=int, default=16, help="edge probe closed-loop clients")
    parser.add_argument(
        "--edge-only", action="store_true", help="the edge probe alone: no Recognize cells (about 4 minutes)"
    )
    parser.add_argument(
        "--recognize-cpu-s",
        type=float,
        default=None,
        help="whole-mesh CPU seconds per Recognize call for the bound when no Recognize cells are "
        "measured (with --edge-only; 0.95-1.06 measured on a 2-core AMD EPYC, 2026-12-07)",
    )
