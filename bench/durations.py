"""Go-style durations (`10s`, `1m30s`, `500ms`) as ghz takes them, to and from seconds."""

from __future__ import annotations

import re

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration_ns(text: str) -> int:
    """Nanoseconds in a Go duration such as `1m30s` or `250ms`; a bare number means seconds."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    if value.startswith("-"):
        raise ValueError(f"duration must not be negative: {text!r}")
    value = value.removeprefix("+")
    if _NUMBER.fullmatch(value):
        return round(float(value) * 1e9)
    total = 0.0
    pos = 0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"invalid duration {text!r} (examples: 500ms, 10s, 1m, 1m30s)")
    return round(total)


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as `10s`, `1m` or `500ms`; a bare number means seconds."""
    return parse_duration_ns(text) / 1e9


def format_duration(seconds: float) -> str:
    """A Go duration string for `seconds` that Go's time.ParseDuration reads back exactly."""
    ns = round(seconds * 1e9)
    if ns < 0:
        raise ValueError(f"duration must not be negative: {seconds}")
    if ns % 1_000_000_000 == 0:
        return f"{ns // 1_000_000_000}s"
    if ns % 1_000_000 == 0:
        return f"{ns // 1_000_000}ms"
    if ns % 1_000 == 0:
        return f"{ns // 1_000}us"
    return f"{ns}ns"
