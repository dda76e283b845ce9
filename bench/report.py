"""ghz's JSON report (runner/reporter.go) built from recorded calls, and ghz's summary text."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

# Go's codes.Code.String() for each gRPC status code number (google.golang.org/grpc/codes).
GO_CODE_NAMES = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)
PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)
HISTOGRAM_BUCKETS = 10
MAX_DETAILS = 1_000_000  # ghz's maxResult: details beyond this are counted but not listed
END_REASONS = ("normal", "cancel", "timeout")
_NS = 1_000_000_000
_BAR = "∎"


class CallResult(NamedTuple):
    """One finished call: when it started, how long it took, its Go status name and error text."""

    start_ns: int  # Unix epoch nanoseconds when the call was sent
    latency_ns: int
    status: str  # Go code name: "OK", "ResourceExhausted", ...
    error: str  # "" on success, else like "rpc error: code = X desc = Y"


def go_code_name(code: int) -> str:
    """Go's name for a numeric gRPC status code (`Code(N)` for unknown numbers, as Go prints)."""
    if 0 <= code < len(GO_CODE_NAMES):
        return GO_CODE_NAMES[code]
    return f"Code({code})"


def go_error(status: str, message: str) -> str:
    """The text of a Go gRPC status error, as ghz puts in errorDistribution and details."""
    return f"rpc error: code = {status} desc = {message}"


def go_time(ns: int, nano: bool = True) -> str:
    """Unix ns as Go marshals a time.Time: RFC 3339, trimmed nanoseconds, local zone."""
    seconds, frac = divmod(ns, _NS)
    local = datetime.fromtimestamp(seconds, tz=UTC).astimezone()
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if nano and frac:
        text += "." + f"{frac:09d}".rstrip("0")
    offset = local.utcoffset()
    minutes = round(offset.total_seconds() / 60) if offset is not None else 0
    if minutes == 0:
        return text + "Z"
    sign = "+" if minutes > 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


def _seconds(ns: int) -> float:
    # Go's Duration.Seconds(): whole seconds plus the remainder, so sums match ghz bit for bit.
    whole, rest = divmod(ns, _NS)
    return whole + rest / 1e9


def _duration(seconds: float) -> int:
    # Go's time.Duration(seconds * float64(time.Second)) truncates toward zero.
    return int(seconds * 1e9)


def latency_distribution(ordered: Sequence[float]) -> list[dict[str, int]]:
    """ghz's latencyDistribution of sorted latencies in seconds, by its rank rule."""
    size = float(len(ordered))
    found: list[dict[str, int]] = []
    for pct in PERCENTAGES:
        rank = pct / 100.0 * size
        index = int(rank)
        if rank == float(index):
            index -= 1
        value = ordered[max(index, 0)]
        if value > 0:
            found.append({"percentage": pct, "latency": _duration(value)})
        else:  # ghz leaves a zero entry when the latency is not positive
            found.append({"percentage": 0, "latency": 0})
    return found


def histogram(ordered: Sequence[float]) -> list[dict[str, float | int]]:
    """ghz's histogram: 11 marks from fastest to slowest (seconds); each latency counts once."""
    fastest, slowest = ordered[0], ordered[-1]
    step = (slowest - fastest) / HISTOGRAM_BUCKETS
    marks = [fastest + step * i for i in range(HISTOGRAM_BUCKETS)] + [slowest]
    counts = [0] * len(marks)
    bucket = 0
    i = 0
    while i < len(ordered):
        if ordered[i] <= marks[bucket]:
            counts[bucket] += 1
            i += 1
        elif bucket < len(marks) - 1:
            bucket += 1
        else:  # float rounding can leave a value above the last mark; ghz cannot, slowest is exact
            counts[bucket] += 1
            i += 1
    return [
        {"mark": mark, "count": count, "frequency": count / len(ordered)}
        for mark, count in zip(marks, counts, strict=True)
    ]


def ghz_options(
    *,
    call: str,
    host: str,
    insecure: bool,
    concurrency: int,
    total: int,
    duration_ns: int = 0,
    timeout_ns: int = 0,
    dial_timeout_ns: int = 0,
    rps: int = 0,
    connections: int = 1,
    data: Any = None,
    binary: bool = False,
    metadata: Mapping[str, str] | None = None,
    cpus: int = 1,
    name: str = "",
    skip_first: int = 0,
    count_errors: bool = False,
) -> dict[str, Any]:
    """The report's "options" object as ghz's runner.Options marshals it (omitempty honoured).

    Like ghz, `total` is reported as 2147483647 when a duration is set (n is then ignored).
    """
    raw: list[tuple[str, Any, bool | None]] = [  # (key, value, omitempty; None: omit if None)
        ("call", call, True),
        ("host", host, True),
        ("insecure", insecure, False),
        ("rps", rps, True),
        ("load-schedule", "const", False),
        ("load-start", 0, False),
        ("load-end", 0, False),
        ("load-step", 0, False),
        ("load-step-duration", 0, False),
        ("load-max-duration", 0, False),
        ("concurrency", concurrency, True),
        ("concurrency-schedule", "const", False),
        ("concurrency-start", 0, False),
        ("concurrency-end", 0, False),
        ("concurrency-step", 1, False),
        ("concurrency-step-duration", 0, False),
        ("concurrency-max-duration", 0, False),
        ("total", 2_147_483_647 if duration_ns > 0 else total, True),
        ("connections", connections, True),
        ("duration", duration_ns, True),
        ("timeout", timeout_ns, True),
        ("dial-timeout", dial_timeout_ns, True),
        ("data", data, None),  # an interface{}: omitted only when nil
        ("binary", binary, False),
        ("metadata", dict(sorted(metadata.items())) if metadata else None, True),
        ("CPUs", cpus, False),
        ("name", name, True),
        ("skipFirst", skip_first, True),
        ("count-errors", count_errors, True),
    ]
    return {
        key: value for key, value, omit in raw if not (value is None if omit is None else omit and not value)
    }


def build_report(
    results: Sequence[CallResult],
    options: Mapping[str, Any],
    total_ns: int,
    end_reason: str,
    *,
    date_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """ghz's report for `results` (in completion order), the way runner/reporter.go finalizes it.

    Faithful to ghz: average and rps count every call; fastest, slowest, histogram and
    latencyDistribution use successful calls only (all calls with options["count-errors"]);
    the first options["skipFirst"] results are dropped; details list at most 1,000,000 calls,
    each stamped with its end time; with no calls, histogram, latencyDistribution and details
    are null, and with no successful call the first two are null (as Go marshals nil slices).
    Durations are Go nanoseconds, map keys are sorted (as encoding/json does).
    """
    if end_reason not in END_REASONS:
        raise ValueError(f"end reason must be one of {END_REASONS}, not {end_reason!r}")
    kept = results[int(options.get("skipFirst", 0)) :]
    count_errors = bool(options.get("count-errors", False))
    status_dist: dict[str, int] = {}
    error_dist: dict[str, int] = {}
    latency_sum = 0.0
    picked: list[float] = []
    for result in kept:
        seconds = _seconds(result.latency_ns)
        latency_sum += seconds
        status_dist[result.status] = status_dist.get(result.status, 0) + 1
        if result.error:
            error_dist[result.error] = error_dist.get(result.error, 0) + 1
        if not result.error or count_errors:
            picked.append(seconds)
    count = len(kept)
    report: dict[str, Any] = {"date": go_time(time.time_ns() if date_ns is None else date_ns, False)}
    if options.get("name"):
        report["name"] = options["name"]
    report |= {
        "endReason": end_reason,
        "options": dict(options),
        "count": count,
        "total": total_ns,
        "average": 0,
        "fastest": 0,
        "slowest": 0,
        "rps": 0.0,
        "errorDistribution": dict(sorted(error_dist.items())),
        "statusCodeDistribution": dict(sorted(status_dist.items())),
        "latencyDistribution": None,
        "histogram": None,
        "details": None,
    }
    if count:
        report["average"] = _duration(latency_sum / count)
        report["rps"] = count / _seconds(total_ns) if total_ns > 0 else 0.0
        if picked:
            picked.sort()
            report["fastest"] = _duration(picked[0])
            report["slowest"] = _duration(picked[-1])
            report["histogram"] = histogram(picked)
            report["latencyDistribution"] = latency_distribution(picked)
        report["details"] = _details(kept[:MAX_DETAILS])
    if tags:
        report["tags"] = dict(sorted(tags.items()))
    return report


def _details(results: Sequence[CallResult]) -> list[dict[str, Any]]:
    # ghz stamps each detail with the call's end time; format each whole second only once.
    details: list[dict[str, Any]] = []
    last_second = -1
    head = tail = ""
    for result in results:
        end = result.start_ns + result.latency_ns
        second, frac = divmod(end, _NS)
        if second != last_second:
            whole = go_time(second * _NS)
            head, tail = whole[:19], whole[19:]
            last_second = second
        stamp = head + ("." + f"{frac:09d}".rstrip("0") if frac else "") + tail
        details.append(
            {
                "timestamp": stamp,
                "latency": result.latency_ns,
                "error": result.error,
                "status": result.status,
            }
        )
    return details


def nano_unit(ns: int) -> str:
    """ghz's formatNanoUnit: `1234 ns`, `12.34 ms` or `1.23 s`."""
    if ns < 10_000:
        return f"{ns} ns"
    ms = ns / 1e6
    if ms < 1000:
        return f"{ms:4.2f} ms"
    return f"{ms / 1000.0:4.2f} s"


def _histogram_text(buckets: Sequence[Mapping[str, Any]] | None) -> str:
    if not buckets:
        return ""
    max_mark = max(0.0, *(float(b["mark"]) for b in buckets))
    max_count = max(0, *(int(b["count"]) for b in buckets))
    mark_width = len(f"{max_mark * 1000:.3f}")
    count_width = len(str(max_count))
    lines = []
    for bucket in buckets:
        count = int(bucket["count"])
        bar = (count * 40 + max_count // 2) // max_count if max_count > 0 else 0
        mark = f"{float(bucket['mark']) * 1000:.3f}"
        pad = " " * (count_width - len(str(count)))
        lines.append(f"  {mark:<{mark_width}} [{count}]{pad} |{_BAR * bar}\n")
    return "".join(lines)


def _table(rows: Sequence[tuple[str, str]]) -> str:
    # Go's tabwriter with padding 3: both tab-terminated cells padded to their column's width.
    if not rows:
        return ""
    first = max(len(a) for a, _ in rows) + 3
    second = max(len(b) for _, b in rows) + 3
    return "".join(f"{a:<{first}}{b:<{second}}\n" for a, b in rows)


def summary_text(report: Mapping[str, Any]) -> str:
    """The report as ghz's `-O summary` printer (printer/template.go defaultTmpl) renders it."""
    name = report.get("name")
    parts = ["\nSummary:\n"]
    if name:
        parts.append(f"  Name:\t\t{name}\n")
    parts.append(
        f"  Count:\t{report['count']}\n"
        f"  Total:\t{nano_unit(report['total'])}\n"
        f"  Slowest:\t{nano_unit(report['slowest'])}\n"
        f"  Fastest:\t{nano_unit(report['fastest'])}\n"
        f"  Average:\t{nano_unit(report['average'])}\n"
        f"  Requests/sec:\t{report['rps']:4.2f}\n"
        "\nResponse time histogram:\n"
    )
    parts.append(_histogram_text(report.get("histogram")))
    parts.append("\nLatency distribution:")
    for entry in report.get("latencyDistribution") or ():
        parts.append(f"\n  {entry['percentage']} % in {nano_unit(entry['latency'])} ")
    parts.append("\n\n")
    statuses = report.get("statusCodeDistribution") or {}
    if statuses:
        rows = [(f"  [{code}]", f"{n} responses") for code, n in statuses.items()]
        parts.append("Status code distribution:\n" + _table(rows))
    parts.append("\n")
    errors = report.get("errorDistribution") or {}
    if errors:
        rows = [(f"  [{n}]", text) for text, n in errors.items()]
        parts.append("Error distribution:\n" + _table(rows))
    parts.append("\n")
    return "".join(parts)
