"""Sweep cells measured in several rounds: one row per cell (medians over rounds) and paired ratios."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.paired_arms import paired_ratios

BASE_CLIENTS = 4
NAMES = ("key", "ocr", "auth", "path", "concurrency")
SUMMED = (
    "calls", "ok", "seconds", "resource_exhausted", "other_failures", "server_rejected", "server_widened",
    "server_workers_replaced",
)  # fmt: skip
HIGHEST = ("peak_rss_mib", "peak_rss_ocr_mib", "load_1m")
ORDER = (
    "each mesh's cells round by round on the running mesh: odd rounds in plan order (path, then "
    "rising concurrency), even rounds reversed"
)


def rounds_in(table: Sequence[Mapping[str, Any]]) -> int:
    """The most rounds any cell has in these per-(cell, round) rows (0 for none)."""
    return max((int(r.get("round") or 1) for r in table), default=0)


def mean_share(shares: Sequence[str]) -> str:
    """Each instance's share of completed requests ("ocr-1:0.75 ocr-2:0.25"), averaged over rounds."""
    found: dict[str, list[float]] = {}
    for text in shares:
        for part in text.split():
            name, _, value = part.rpartition(":")
            found.setdefault(name, []).append(float(value))
    return " ".join(f"{name}:{sum(v) / len(shares):.2f}" for name, v in sorted(found.items()))


def combine(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One cell's row from its rounds' rows: counts summed, peaks the highest, the rest the median
    (OK/s and p95 included); `ok_per_s_min`/`_max` give the spread and `failure_rate` is of all calls."""
    out: dict[str, Any] = {name: runs[0][name] for name in NAMES}
    for field in runs[0]:
        if field in (*NAMES, "round", "share"):
            continue
        values = [float(r[field]) for r in runs if r.get(field) is not None]
        if not values:
            out[field] = None
        elif field in SUMMED:
            out[field] = int(sum(values)) if field not in ("seconds",) else sum(values)
        elif field in HIGHEST:
            out[field] = max(values)
        else:
            out[field] = statistics.median(values)
    calls = out.get("calls") or 0
    out["failure_rate"] = (calls - (out.get("ok") or 0)) / calls if calls else 0.0
    out["share"] = mean_share([str(r.get("share") or "") for r in runs])
    out["rounds"] = len(runs)
    out["ok_per_s_min"] = min(float(r["ok_per_s"]) for r in runs)
    out["ok_per_s_max"] = max(float(r["ok_per_s"]) for r in runs)
    return out


def cell_rows(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell, in the order of `table` (per-(cell, round) rows)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in table:
        groups.setdefault(str(r["key"]), []).append(r)
    return [combine(runs) for runs in groups.values()]


def base_clients(concurrencies: Sequence[int]) -> int:
    """The cell the others are compared with: 4 clients, else the lowest count above 4, else the
    lowest measured."""
    at_least = [c for c in concurrencies if c >= BASE_CLIENTS]
    return min(at_least) if at_least else min(concurrencies)


def ratios(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per mesh and path, each cell's OK/s over its base cell's (`base_clients`) in the same round,
    then the median and min-max over the rounds both were measured in; `pooled` is all those rounds'
    OK over all their seconds, cell against base. `failed` sums the cell's unanswered calls."""
    lines: dict[tuple[int, int, str], dict[int, dict[int, Mapping[str, Any]]]] = {}
    for r in table:
        line = lines.setdefault((int(r["ocr"]), int(r["auth"]), str(r["path"])), {})
        line.setdefault(int(r["concurrency"]), {})[int(r.get("round") or 1)] = r
    out: list[dict[str, Any]] = []
    for (ocr, auth, path), by_clients in lines.items():
        base = base_clients(sorted(by_clients))
        for clients in sorted(by_clients):
            mine, theirs = by_clients[clients], by_clients[base]
            paired = sorted(r for r in mine if r in theirs and float(theirs[r]["ok_per_s"]) > 0)
            # Rounds whose base served nothing are left out, so with any round paired the base's
            # pooled rate is above 0 and every ratio is defined.
            found = paired_ratios([mine[r] for r in paired], [theirs[r] for r in paired], "ok_per_s", "ok")
            out.append(
                {
                    "ocr": ocr,
                    "auth": auth,
                    "path": path,
                    "concurrency": clients,
                    "base_concurrency": base,
                    "rounds": len(paired),
                    "ok_per_s_median": statistics.median(float(r["ok_per_s"]) for r in mine.values()),
                    "ratio_median": found["median_ratio"] if paired else None,
                    "ratio_min": found["min_ratio"] if paired else None,
                    "ratio_max": found["max_ratio"] if paired else None,
                    "pooled": found["pooled_ratio"] if paired else None,
                    "failed": sum(int(r["calls"]) - int(r["ok"]) for r in mine.values()),
                }
            )
    return out


RATIO_COLUMNS = (
    "ocr", "auth", "path", "concurrency", "base_concurrency", "rounds", "ok_per_s_median",
    "ratio_median", "ratio_min", "ratio_max", "pooled", "failed",
)  # fmt: skip


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def ratio_section(found: Sequence[Mapping[str, Any]]) -> list[str]:
    """The markdown section with the paired ratios (what a claim like "within 5 % of 4 clients" quotes)."""
    bases = sorted({int(r["base_concurrency"]) for r in found})
    said = ", ".join(str(b) for b in bases)
    out = [
        "",
        f"## Paired throughput ratios (OK/s against the {said}-client cell)",
        "",
        f"For each mesh and path: each cell's OK/s divided by the OK/s of the cell with {BASE_CLIENTS} "
        f"clients (or, without one, the lowest count above {BASE_CLIENTS}, else the lowest measured; "
        "`vs` says which) measured in the same round, then the median and the min-max of those ratios "
        "over the rounds. Within a round the cells ran one after another on one mesh, so load on the "
        "machine that drifts between rounds cancels out of the ratio. `pooled` is all paired rounds' OK "
        "calls over all their seconds, the cell against its base. `failed` is the cell's calls not "
        "answered with text, summed over its rounds.",
        "",
        "| path | OCR | auth | clients | vs | rounds | OK/s (median) | ratio (median) | ratio min-max "
        "| pooled ratio | failed (all rounds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in found:
        spread = f"{_ratio(r['ratio_min'])}-{_ratio(r['ratio_max'])}" if r["ratio_min"] is not None else "-"
        out.append(
            f"| {r['path']} | {r['ocr']} | {r['auth']} | {r['concurrency']} | {r['base_concurrency']} "
            f"| {r['rounds']} | {r['ok_per_s_median']:.2f} | {_ratio(r['ratio_median'])} | {spread} "
            f"| {_ratio(r['pooled'])} | {r['failed']} |"
        )
    return out
