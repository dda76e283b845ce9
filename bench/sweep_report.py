"""Sweep results from the recorded cells: summary rows, CSV, JSON, a markdown report and PNG plots.

With several rounds per cell, tables and plots show each cell's median (bench/sweep_rounds.py)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.process_cpu import CLIENT
from bench.sweep_plan import PATHS, record_round
from bench.sweep_rounds import ORDER, RATIO_COLUMNS, cell_rows, ratio_section, ratios, rounds_in

MIB = 2**20
CSV_COLUMNS = (
    "key", "ocr", "auth", "path", "concurrency", "calls", "ok", "ok_per_s", "avg_ms", "avg_ok_ms",
    "p50_ok_ms", "p95_ok_ms", "p99_ok_ms", "failure_rate", "resource_exhausted", "other_failures",
    "server_queue_ms", "server_compute_ms", "server_rejected", "server_widened", "server_wide_share",
    "server_workers_replaced", "share", "peak_rss_mib", "peak_rss_ocr_mib",
    "load_1m", "ocr_cores", "ocr_cpu_per_request_s", "client_cores", "mesh_other_cores", "machine_cores",
    "stolen_cores",
)  # fmt: skip
CELL_COLUMNS = (*CSV_COLUMNS, "seconds", "rounds", "ok_per_s_min", "ok_per_s_max")  # sweep.csv
ROUND_COLUMNS = (*CSV_COLUMNS, "seconds", "round")  # sweep-rounds.csv, one row per (cell, round)


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """Client-side figures of one ghz report (read before its details are dropped).

    ghz's `average` counts every call, fast rejections too; `avg_ok_ms` is the mean of OK calls only,
    which is what a user waits for an answer. Percentiles are of OK calls, as ghz computes them.
    """
    codes: dict[str, int] = dict(report.get("statusCodeDistribution") or {})
    count = int(report.get("count") or 0)
    ok = int(codes.get("OK", 0))
    seconds = float(report.get("total") or 0) / 1e9
    pcts = {int(d["percentage"]): d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    ok_latencies = [d["latency"] for d in report.get("details") or [] if d.get("status") == "OK"]
    exhausted = int(codes.get("ResourceExhausted", 0))
    return {
        "calls": count,
        "ok": ok,
        "seconds": seconds,
        "ok_per_s": ok / seconds if seconds else 0.0,
        "rps": float(report.get("rps") or 0.0),
        "avg_ms": float(report.get("average") or 0) / 1e6,
        "avg_ok_ms": sum(ok_latencies) / len(ok_latencies) / 1e6 if ok_latencies else 0.0,
        "p50_ok_ms": pcts.get(50, 0.0),
        "p95_ok_ms": pcts.get(95, 0.0),
        "p99_ok_ms": pcts.get(99, 0.0),
        "status_codes": codes,
        "failure_rate": (count - ok) / count if count else 0.0,
        "resource_exhausted": exhausted,
        "other_failures": count - ok - exhausted,
    }


def without_details(report: Mapping[str, Any]) -> dict[str, Any]:
    """The ghz report to keep: no per-call list (it can be megabytes; committed results stay small)
    and no credentials (the access token in the options' metadata is replaced)."""
    slim = dict(report)
    slim["details"] = None
    options = dict(slim.get("options") or {})
    if options.get("metadata"):
        options["metadata"] = {
            k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in options["metadata"].items()
        }
    slim["options"] = options
    slim["tags"] = {**(report.get("tags") or {}), "ocrmesh.details": "omitted"}
    return slim


def row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One flat table row (a (cell, round)'s columns) from a recorded cell."""
    cell, summary = record["cell"], record["summary"]
    server = record.get("server") or {}
    totals = server.get("totals") or {}
    instances = server.get("instances") or {}
    rss = record.get("rss_mib") or {}
    by_process = rss.get("by_process") or {}
    ocr_rss = [mib for name, mib in by_process.items() if name.startswith("ocr")]
    return {
        "key": cell["key"],
        "ocr": cell["ocr"],
        "auth": cell["auth"],
        "path": cell["path"],
        "concurrency": cell["concurrency"],
        **{k: summary[k] for k in CSV_COLUMNS[5:16]},
        "server_queue_ms": totals.get("queue_ms", 0.0),
        "server_compute_ms": totals.get("compute_ms", 0.0),
        "server_rejected": int(totals.get("rejected_busy", 0)),
        "server_widened": int(totals.get("widened", 0)),
        "server_wide_share": wide_share(totals),
        # Recycled on purpose or restarted after a crash: a one-worker instance may stall meanwhile.
        "server_workers_replaced": int(totals.get("worker_recycles", 0) + totals.get("worker_restarts", 0)),
        "share": " ".join(f"{name}:{d.get('share', 0.0):.2f}" for name, d in sorted(instances.items())),
        "peak_rss_mib": float(rss.get("total_peak", 0.0)),
        "peak_rss_ocr_mib": max(ocr_rss, default=0.0),
        "load_1m": max(record["load_1m"]) if record.get("load_1m") else None,  # not in older records
        **cpu_columns(record.get("cpu"), totals.get("completed", 0.0)),
        "seconds": float(summary.get("seconds") or 0.0),
        "round": record_round(record),
    }


def wide_share(totals: Mapping[str, Any]) -> float | None:
    """The share of the cell's model runs that ran on the wide sessions (None in older records)."""
    runs = float(totals.get("model_runs") or 0.0)
    return float(totals.get("wide_model_runs") or 0.0) / runs if runs else None


def wide_text(row: Mapping[str, Any]) -> str:
    share = row.get("server_wide_share")
    jobs = row.get("server_widened") or 0
    return f"{jobs:.0f}" if share is None else f"{jobs:.0f} ({100 * float(share):.0f} %)"


def cpu_columns(cpu: Mapping[str, Any] | None, completed: float) -> dict[str, float | None]:
    """Cores used during the cell's load: the OCR instances' trees (service and workers), their CPU
    seconds per completed request, the client (load generator and samplers), the rest of the mesh
    (etcd, auth, gateway, BFF), the whole machine and the cores the hypervisor stole; None in records
    from before CPU (or steal) was measured."""
    if not cpu:
        return dict.fromkeys(CSV_COLUMNS[-6:])
    cores: Mapping[str, float] = cpu.get("cores") or {}
    ocr = sum(v for name, v in cores.items() if name.startswith("ocr"))
    client = float(cores.get(CLIENT, 0.0))
    return {
        "ocr_cores": ocr,
        "ocr_cpu_per_request_s": ocr * float(cpu.get("seconds", 0.0)) / completed if completed else None,
        "client_cores": client,
        "mesh_other_cores": sum(cores.values()) - ocr - client,
        "machine_cores": float(cpu.get("machine_cores", 0.0)),
        "stolen_cores": float(cpu["stolen_cores"]) if "stolen_cores" in cpu else None,
    }


def rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per recorded (cell, round), by path, instances, concurrency, round."""
    order = {p: i for i, p in enumerate(PATHS)}
    found = [row(r) for r in records]
    return sorted(
        found, key=lambda r: (order.get(r["path"], 9), r["ocr"], r["auth"], r["concurrency"], r["round"])
    )


def to_csv(table: Sequence[Mapping[str, Any]], columns: Sequence[str] = CELL_COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in table:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return out.getvalue()


def series_label(r: Mapping[str, Any]) -> str:
    return f"{r['path']}, {r['ocr']} OCR x {r['auth']} auth"


def series(table: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows grouped into plot lines (one per path and instance count), each by rising concurrency."""
    lines: dict[str, list[Mapping[str, Any]]] = {}
    for r in table:
        lines.setdefault(series_label(r), []).append(r)
    return {label: sorted(points, key=lambda r: r["concurrency"]) for label, points in lines.items()}


def plot(table: Sequence[Mapping[str, Any]], folder: Path, title: str) -> list[Path]:
    """latency.png (mean and p95 of OK calls), throughput.png and failures.png vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = series(table)
    styles = {"direct": "-", "gateway": "--", "bff": ":"}
    made: list[Path] = []

    # One colour per mesh (instance counts), one line style per way in: same mesh, same colour.
    meshes = sorted({(r["ocr"], r["auth"]) for r in table})
    palette = matplotlib.colormaps["tab10"]
    colours = {mesh: palette(i % 10) for i, mesh in enumerate(meshes)}

    def draw(ax: Any, field: str, scale: float = 1.0) -> None:
        for label, points in lines.items():
            xs = [p["concurrency"] for p in points]
            ys = [p[field] * scale for p in points]
            first = points[0]
            style = styles.get(str(first["path"]), "-")
            colour = colours[(first["ocr"], first["auth"])]
            if field == "ok_per_s" and any(p.get("rounds", 1) > 1 for p in points):
                low = [(p["ok_per_s"] - p["ok_per_s_min"]) * scale for p in points]
                high = [(p["ok_per_s_max"] - p["ok_per_s"]) * scale for p in points]
                ax.errorbar(xs, ys, yerr=[low, high], fmt="o" + style, color=colour, capsize=3, label=label)
                continue
            ax.plot(xs, ys, style, color=colour, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["concurrency"] for r in table}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.grid(True, alpha=0.3)

    mean, p95 = ("avg_ok_ms", "mean latency of OK calls (s)"), ("p95_ok_ms", "p95 latency of OK calls (s)")
    failed = ("failure_rate", "calls not answered with text (% of calls made)")
    other = ("other_failures", "failures other than RESOURCE_EXHAUSTED (count)")
    specs = (
        ("latency.png", (mean, p95)),
        ("throughput.png", (("ok_per_s", "OK images per second"),)),
        ("failures.png", (failed, other)),
    )
    for name, panels in specs:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
        for ax, (field, ylabel) in zip(axes[0], panels, strict=True):
            scale = 1e-3 if field.endswith("_ms") else 100.0 if field == "failure_rate" else 1.0
            draw(ax, field, scale)
            ax.set_ylabel(ylabel)
            tops = (r.get(f"{field}_max", r[field]) * scale for r in table)
            ax.set_ylim(bottom=0, top=max(1.0, *tops) * 1.08)
            if field == "other_failures":
                ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0][0].legend(fontsize="small")
        fig.suptitle(title, fontsize="medium")
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    return made


def _load(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _f(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def markdown(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], plots: Sequence[str]) -> str:
    """The report: what ran, client-side and server-side tables, paired ratios, plots, how to read them."""
    per_round = rows(records)
    table = cell_rows(per_round)
    rounds = rounds_in(per_round)
    several = rounds > 1
    rss_by_key: dict[str, dict[str, float]] = {}
    for rec in records:
        peaks = rss_by_key.setdefault(rec["cell"]["key"], {})
        for name, mib in ((rec.get("rss_mib") or {}).get("by_process") or {}).items():
            peaks[name] = max(peaks.get(name, 0.0), float(mib))
    out = [
        f"# Sweep {meta.get('date', '')}",
        "",
        f"`{meta.get('command', '')}`",
        "",
    ]
    matrix = meta.get("matrix") or {}
    if matrix:
        out += [
            "Cells: " + ", ".join(f"{k} {','.join(str(v) for v in vs)}" for k, vs in matrix.items()) + ".",
            "",
        ]
    out += [
        f"ocrmesh {meta.get('ocrmesh', '?')}, Python {meta.get('python', '?')}, "
        f"onnxruntime {meta.get('onnxruntime', '?')}, rapidocr {meta.get('rapidocr', '?')}, "
        f"{meta.get('cpus', '?')} CPUs ({meta.get('machine', '?')}), image `{meta.get('image', '?')}`, "
        f"{_f(float(meta.get('warmup_s', 0)), 0)}s warm-up + {_f(float(meta.get('duration_s', 0)), 0)}s "
        f"load per cell, {meta.get('workers', 1)} worker process(es) per OCR instance, "
        f"{meta.get('elapsed_s', 0) / 60:.1f} min in all.",
        "",
        f"Rounds: {rounds}"
        + (
            f", {ORDER}. Tables and plots give each cell's median over its rounds "
            "(OK/s with its min-max; calls and failures summed; peak RSS the highest)."
            if several
            else "."
        ),
        "",
    ]
    if meta.get("mix"):
        mix = ", ".join(f"{kind}={weight}" for kind, weight in sorted(meta["mix"].items()))
        users = meta.get("mix_users", "?")
        out += [f"Mixed workload: {mix} (logins of {users} bench accounts in turn, among the OCR calls).", ""]
    for note in meta.get("notes") or ():
        out.append(f"- {note}")
    if meta.get("notes"):
        out.append("")
    out += [
        "## Client side",
        "",
        "Closed loop: each client sends the next call when its last one ends; a client told "
        "RESOURCE_EXHAUSTED waits the server's RetryInfo hint. Calls in flight at the end finish and count. "
        f"`load avg` is the machine's 1-minute load average around the cell ({meta.get('cpus', '?')} CPUs). "
        "It counts runnable threads, the mesh's own included, so a value well above the CPU count in a "
        "light cell points to other work on the machine.",
        "",
        "| path | OCR | auth | clients | "
        + ("rounds | calls | OK/s (median) | OK/s min-max |" if several else "calls | OK/s |")
        + " mean OK (s) | p50 OK (s) | p95 OK (s) | p99 OK (s) "
        "| mean all, ghz (s) | failed | RESOURCE_EXHAUSTED | other failures | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if several else ""),
    ]
    for r in table:
        spread = f"{r['rounds']} | {r['calls']} | {_f(r['ok_per_s'])} " if several else ""
        spread += f"| {_f(r['ok_per_s_min'])}-{_f(r['ok_per_s_max'])} " if several else ""
        out.append(
            f"| {r['path']} | {r['ocr']} | {r['auth']} | {r['concurrency']} | "
            + (spread if several else f"{r['calls']} | {_f(r['ok_per_s'])} ")
            + f"| {_f(r['avg_ok_ms'] / 1e3)} | {_f(r['p50_ok_ms'] / 1e3)} "
            f"| {_f(r['p95_ok_ms'] / 1e3)} "
            f"| {_f(r['p99_ok_ms'] / 1e3)} | {_f(r['avg_ms'] / 1e3)} | {100 * r['failure_rate']:.1f}% "
            f"| {r['resource_exhausted']} | {r['other_failures']} | {_load(r['load_1m'])} |"
        )
    out += ratio_section(ratios(per_round))
    out += [
        "",
        "## Server side",
        "",
        "From the OCR instances' Prometheus counters, scraped before and after each cell's load: mean time a "
        "request waited in the admission queue vs the time a worker spent on it, requests rejected at once "
        "(queue full), jobs with a model run on the wide sessions (alone on the machine, "
        "--lone-request-threads) and the share of all model runs that ran wide, each instance's share of "
        "completed requests, worker processes replaced during the cell (recycled after "
        "--recycle-after-jobs, or restarted after a crash); peak RSS of each process tree "
        "(sampled every 0.1 s during warm-up and load).",
        "",
        "| path | OCR | auth | clients | queue (ms) | compute (ms) | rejected | ran wide: jobs (model runs) "
        "| share of requests | workers replaced "
        "| peak RSS all (MiB) | peak RSS per process (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        rss = rss_by_key.get(r["key"]) or {}
        per = ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(rss.items()))
        out.append(
            f"| {r['path']} | {r['ocr']} | {r['auth']} | {r['concurrency']} | {r['server_queue_ms']:.0f} "
            f"| {r['server_compute_ms']:.0f} | {r['server_rejected']} | {wide_text(r)} "
            f"| {r['share'] or '-'} | {r.get('server_workers_replaced') or 0} "
            f"| {r['peak_rss_mib']:.0f} | {per} |"
        )
    out += cpu_section(table, meta)
    mixed = [rec for rec in records if rec.get("mix")]
    if mixed:
        out += [
            "",
            "## Mixed workload, by call kind",
            "",
            "| cell | kind | calls | OK/s | mean OK (s) | p95 OK (s) | failed |",
            "|---|---|---|---|---|---|---|",
        ]
        for rec in sorted(mixed, key=lambda rec: (rec["cell"]["key"], record_round(rec))):
            name = rec["cell"]["key"] + (f" round {record_round(rec)}" if several else "")
            for kind, s in sorted(rec["mix"].items()):
                out.append(
                    f"| {name} | {kind} | {s['calls']} | {_f(s['ok_per_s'])} "
                    f"| {_f(s['avg_ok_ms'] / 1e3)} | {_f(s['p95_ok_ms'] / 1e3)} "
                    f"| {100 * s['failure_rate']:.1f}% |"
                )
    if plots:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    out.append("")
    return "\n".join(out)


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def cpu_section(table: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[str]:
    """Where the machine's CPU went during each cell's load (absent for records without it)."""
    if all(r.get("machine_cores") is None for r in table):
        return []
    out = [
        "",
        "## CPU",
        "",
        "Cores used during each cell's measured load (CPU seconds per second, from the processes' own "
        "counters): the OCR instances with their workers, their CPU per completed request, the client "
        "(this process: load generator and samplers), the rest of the mesh (etcd, auth, gateway, BFF), and "
        f"the whole machine ({meta.get('cpus', '?')} CPUs). `other work` is the machine less all of ours: "
        "CPU the OCR workers could not have. A cell whose OCR cores drop while its CPU per request holds "
        "lost throughput to the machine, not to its own load. `stolen` is the time the hypervisor ran "
        "something else while this machine's cores had work (/proc/stat steal; 0 on bare metal): a cell "
        "measured while the host took cores is slower for reasons outside the mesh.",
        "",
        "| path | OCR | auth | clients | OK/s | OCR (cores) | OCR CPU per request (s) | client (cores) "
        "| rest of mesh (cores) | machine (cores) | other work (cores) | stolen (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        ours = [r.get(k) for k in ("ocr_cores", "client_cores", "mesh_other_cores")]
        machine = r.get("machine_cores")
        known = [float(v) for v in ours if v is not None]
        other = None if machine is None or len(known) < len(ours) else max(0.0, machine - sum(known))
        out.append(
            f"| {r['path']} | {r['ocr']} | {r['auth']} | {r['concurrency']} | {_f(r['ok_per_s'])} "
            f"| {_cores(r.get('ocr_cores'))} | {_cores(r.get('ocr_cpu_per_request_s'))} "
            f"| {_cores(r.get('client_cores'))} | {_cores(r.get('mesh_other_cores'))} "
            f"| {_cores(machine)} | {_cores(other)} | {_cores(r.get('stolen_cores'))} |"
        )
    return out


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every recorded cell in `folder/cells`, whatever its settings."""
    found = []
    for path in sorted((folder / "cells").glob("*.json")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found


def write_report(
    folder: Path, records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> dict[str, Path]:
    """sweep.csv (one row per cell), sweep-ratios.csv, sweep.json, the PNG plots and sweep.md in
    `folder`, and with several rounds sweep-rounds.csv (one row per cell and round); returns what was
    written."""
    per_round = rows(records)
    table = cell_rows(per_round)
    paired = ratios(per_round)
    written = {
        "csv": folder / "sweep.csv",
        "ratios": folder / "sweep-ratios.csv",
        "json": folder / "sweep.json",
        "md": folder / "sweep.md",
    }
    written["csv"].write_text(to_csv(table), encoding="utf-8")
    written["ratios"].write_text(to_csv(paired, RATIO_COLUMNS), encoding="utf-8")
    found: dict[str, Any] = {"meta": dict(meta), "rows": table, "ratios": paired}
    if rounds_in(per_round) > 1:
        written["rounds"] = folder / "sweep-rounds.csv"
        written["rounds"].write_text(to_csv(per_round, ROUND_COLUMNS), encoding="utf-8")
        found["round_rows"] = per_round
    written["json"].write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    pngs = (
        plot(table, folder, f"ocrmesh sweep {meta.get('date', '')}, {meta.get('image', '')}") if table else []
    )
    for png in pngs:
        written[png.stem] = png
    written["md"].write_text(markdown(records, meta, [p.name for p in pngs]), encoding="utf-8")
    return written
