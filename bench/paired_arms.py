"""Two arms measured round by round: per-round rate ratios, their median and range, the pooled ratio."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def pooled_rate(runs: Sequence[Mapping[str, Any]], count: str) -> float:
    """All the runs' `count` over all their seconds."""
    seconds = sum(r["seconds"] for r in runs)
    return sum(r[count] for r in runs) / seconds if seconds else 0.0


def paired_ratios(
    first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]], rate: str, count: str
) -> dict[str, Any]:
    """`first` over `second`, run by run (the two arms of a round ran back to back, so load that
    drifts between rounds cancels out): each round's `rate` ratio, their median, min and max, and
    the pooled ratio (`count` over seconds of all rounds). A zero denominator gives 0."""
    ratios = [a[rate] / b[rate] if b[rate] else 0.0 for a, b in zip(first, second, strict=True)]
    base = pooled_rate(second, count)
    return {
        "ratios": ratios,
        "median_ratio": statistics.median(ratios) if ratios else 0.0,
        "min_ratio": min(ratios, default=0.0),
        "max_ratio": max(ratios, default=0.0),
        "pooled_ratio": pooled_rate(first, count) / base if base else 0.0,
    }
