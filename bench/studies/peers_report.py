"""Peer comparison results: rounds pooled per target and concurrency, ratios, verdicts, table and plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.report import latency_distribution

PEER = "rapidocr-api"


def pooled(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary of several rounds' ghz reports (with details): OK/s over all their time, and
    percentiles of all their OK latencies together (ghz's rank rule)."""
    seconds = sum(float(r["total"]) for r in reports) / 1e9
    codes: dict[str, int] = {}
    ok_s: list[float] = []
    for report in reports:
        for code, n in (report.get("statusCodeDistribution") or {}).items():
            codes[code] = codes.get(code, 0) + int(n)
        ok_s += [d["latency"] / 1e9 for d in report.get("details") or [] if d.get("status") == "OK"]
    ok_s.sort()
    calls, ok = sum(codes.values()), codes.get("OK", 0)
    pcts = {d["percentage"]: d["latency"] / 1e6 for d in latency_distribution(ok_s)} if ok_s else {}
    exhausted = codes.get("ResourceExhausted", 0)
    return {
        "rounds": len(reports),
        "calls": calls,
        "ok": ok,
        "seconds": seconds,
        "ok_per_s": ok / seconds if seconds else 0.0,
        "avg_ok_ms": 1000 * sum(ok_s) / len(ok_s) if ok_s else 0.0,
        "p50_ok_ms": pcts.get(50, 0.0),
        "p95_ok_ms": pcts.get(95, 0.0),
        "status_codes": dict(sorted(codes.items())),
        "resource_exhausted": exhausted,
        "other_failures": calls - ok - exhausted,
        "failure_rate": (calls - ok) / calls if calls else 0.0,
    }


def comparisons(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each ocrmesh target against the peer at each concurrency: throughput, p95 and RSS ratios."""
    by = {(r["target"], r["concurrency"]): r for r in table}
    out = []
    for r in table:
        peer = by.get((PEER, r["concurrency"]))
        if r["target"] == PEER or peer is None:
            continue
        out.append(
            {
                "target": r["target"],
                "concurrency": r["concurrency"],
                "throughput_ratio": r["ok_per_s"] / peer["ok_per_s"] if peer["ok_per_s"] else float("inf"),
                "p95_ratio": r["p95_ok_ms"] / peer["p95_ok_ms"] if peer["p95_ok_ms"] else float("inf"),
                "rss_ratio": r["peak_rss_mib"] / peer["peak_rss_mib"]
                if peer["peak_rss_mib"]
                else float("inf"),
                "other_failures": r["other_failures"],
                "peer_other_failures": peer["other_failures"],
            }
        )
    return out


def verdicts(compared: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool, str]]:
    """The acceptance lines, checked: (what, passed, the figures behind it)."""
    found: list[tuple[str, bool, str]] = []
    targets = sorted({c["target"] for c in compared})
    for target in targets:
        mine = [c for c in compared if c["target"] == target]
        at2 = [c for c in mine if c["concurrency"] >= 2]
        if at2:
            worst = min(at2, key=lambda c: c["throughput_ratio"])
            found.append(
                (
                    f"{target}: throughput >= 1.4x {PEER} at every concurrency >= 2",
                    all(c["throughput_ratio"] >= 1.4 for c in at2),
                    ", ".join(f"c{c['concurrency']} {c['throughput_ratio']:.2f}x" for c in at2)
                    + f" (lowest at c{worst['concurrency']})",
                )
            )
            found.append(
                (
                    f"{target}: lower p95 than {PEER} at every concurrency >= 2",
                    all(c["p95_ratio"] < 1.0 for c in at2),
                    ", ".join(f"c{c['concurrency']} {c['p95_ratio']:.2f}x" for c in at2),
                )
            )
        top = max(mine, key=lambda c: c["concurrency"])
        found.append(
            (
                f"{target}: no failures other than RESOURCE_EXHAUSTED at c{top['concurrency']}",
                top["other_failures"] == 0,
                f"{top['other_failures']} (peer: {top['peer_other_failures']})",
            )
        )
        found.append(
            (
                f"{target}: peak RSS at c{top['concurrency']} at most 1/3 of {PEER}'s",
                top["rss_ratio"] <= 1 / 3,
                f"{top['rss_ratio']:.2f}x",
            )
        )
    return found


def plot(table: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["target"] for r in table))
    panels = (
        ("ok_per_s", "OK images per second", 1.0),
        ("p95_ok_ms", "p95 latency of OK calls (s)", 1e-3),
        ("peak_rss_mib", "peak RSS of the server side (GiB)", 1 / 1024),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, (field, label, scale) in zip(axes, panels, strict=True):
        for target in targets:
            points = sorted((r for r in table if r["target"] == target), key=lambda r: r["concurrency"])
            style = "-" if target == PEER else "--"
            ax.plot(
                [p["concurrency"] for p in points],
                [p[field] * scale for p in points],
                style,
                marker="o",
                label=target,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["concurrency"] for r in table}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(label)
        values = [r[field] * scale for r in table if r[field] > 0]
        if field == "p95_ok_ms" and values and max(values) > 20 * min(values):
            ax.set_yscale("log")  # the peer's tail is two orders above ours: a linear axis hides ours
            ax.set_ylabel(label + ", log scale")
        else:
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(table: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], plot_name: str) -> str:
    compared = comparisons(table)
    checks = verdicts(compared)
    peer_meta = meta.get("peer_versions") or {}
    out = [
        f"# ocrmesh vs {PEER} ({meta.get('date', '')})",
        "",
        f"`{meta.get('command', '')}`",
        "",
        f"Same machine ({meta.get('cpus', '?')} CPUs, {meta.get('machine', '?')}, shared with other work), "
        f"same image (`{meta.get('image', '?')}`), same closed-loop clients, "
        f"{meta.get('duration_s', 0):.0f}s per run, {meta.get('rounds', 1)} rounds; in each round the "
        "targets take turns at each concurrency (the order flips every round), so load from anything "
        f"else falls on all of them alike; {meta.get('elapsed_s', 0) / 60:.1f} min in all.",
        "",
        f"- **{PEER}** {peer_meta.get('rapidocr-api', '?')} (rapidocr {peer_meta.get('rapidocr', '?')}, "
        f"onnxruntime {peer_meta.get('onnxruntime', '?')}, uvicorn {peer_meta.get('uvicorn', '?')}): its "
        "default single uvicorn worker, one shared RapidOCR engine called from FastAPI's thread pool, "
        "HTTP multipart upload to POST /ocr. Restarted at the start of every round.",
        f"- **ocrmesh** {meta.get('ocrmesh', '?')} (rapidocr {meta.get('rapidocr', '?')}, onnxruntime "
        f"{meta.get('onnxruntime', '?')}): `ocrmesh up` layout with {meta.get('ocr', '?')} OCR instance(s) "
        f"x {meta.get('workers', '?')} worker process(es), auth on (every call carries a token). "
        "`ocrmesh-grpc`: Recognize through the balancing client (etcd discovery); `ocrmesh-bff`: the "
        "web BFF's POST /api/ocr with a logged-in session (cookies + CSRF), the same upload a browser "
        "makes. RSS for ocrmesh is the whole mesh: etcd, auth, OCR instances and workers, gateway and BFF.",
        "- **Client kinds.** `ocrmesh-grpc` and `ocrmesh-bff` are well-behaved: told RESOURCE_EXHAUSTED "
        "(gRPC) or 429/503 (HTTP), they wait the Retry hint (at most 5 s) before their next call. "
        "The `-at-once` targets call again at once, as ghz does: "
        "`ocrmesh-grpc-at-once` is a plain gRPC client (one "
        "channel, round_robin over the OCR instances' addresses, no retries, no mesh library), "
        "`ocrmesh-bff-at-once` ignores Retry-After. rapidocr-api queues every call and never refuses, so "
        "both kinds of client behave alike against it and it is measured once.",
        "- OK latency percentiles pool every round's OK calls; calls in flight at the end finish and count. "
        "`load avg`: the machine's highest 1-minute load average after that target's runs. It counts "
        "runnable threads, the measured server's own included (rapidocr-api runs up to 40 OCR threads), "
        "so only a high value in a light row points to other work on the machine.",
        "",
        "| clients | target | calls | OK/s | mean OK (s) | p50 OK (s) | p95 OK (s) | RESOURCE_EXHAUSTED "
        "| other failures | peak RSS (MiB) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(table, key=lambda r: (r["concurrency"], r["target"] != PEER, r["target"])):
        out.append(
            f"| {r['concurrency']} | {r['target']} | {r['calls']} | {r['ok_per_s']:.2f} "
            f"| {r['avg_ok_ms'] / 1e3:.2f} | {r['p50_ok_ms'] / 1e3:.2f} | {r['p95_ok_ms'] / 1e3:.2f} "
            f"| {r['resource_exhausted']} | {r['other_failures']} | {r['peak_rss_mib']:.0f} "
            f"| {r.get('load_1m', 0.0):.1f} |"
        )
    out += [
        "",
        f"## Ratios against {PEER} (same concurrency, same run)",
        "",
        "| clients | ocrmesh target | throughput | p95 | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(compared, key=lambda c: (c["concurrency"], c["target"])):
        out.append(
            f"| {c['concurrency']} | {c['target']} | {c['throughput_ratio']:.2f}x | {c['p95_ratio']:.2f}x "
            f"| {c['rss_ratio']:.2f}x |"
        )
    out += ["", "## Acceptance lines", ""]
    out += [f"- {'PASS' if ok else 'FAIL'}: {what}: {figures}" for what, ok, figures in checks]
    better = [
        c for c in compared if c["throughput_ratio"] < 1.0 or c["p95_ratio"] > 1.0 or c["rss_ratio"] > 1.0
    ]
    out += ["", f"## Where {PEER} does better", ""]
    if better:
        out += [
            f"- c{c['concurrency']}, against {c['target']}: "
            + ", ".join(
                what
                for what, worse in (
                    (f"throughput {1 / c['throughput_ratio']:.2f}x of ours", c["throughput_ratio"] < 1.0),
                    (f"p95 {1 / c['p95_ratio']:.2f}x of ours", c["p95_ratio"] > 1.0),
                    (f"RSS {1 / c['rss_ratio']:.2f}x of ours", c["rss_ratio"] > 1.0),
                )
                if worse
            )
            for c in better
        ]
    else:
        out.append("- Nowhere in this run.")
    if meta.get("notes"):
        out += ["", "## Notes", ""] + [f"- {note}" for note in meta["notes"]]
    out += ["", f"![peers]({plot_name})", ""]
    return "\n".join(out)
