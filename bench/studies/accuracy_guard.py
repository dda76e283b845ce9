"""The accuracy regression guard: an eval's CER per image against a committed expected result."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

FORMAT = 1
# How much worse one image may read before the guard fails (the bar: 0.01).
IMAGE_TOLERANCE = 0.01
# How much worse the mean may get: one image losing about a character, not a trend.
MEAN_TOLERANCE = 0.002


class Scored(Protocol):
    """What the guard reads of one image's result (`eval.ImageResult` fits)."""

    @property
    def file(self) -> str: ...

    @property
    def cer(self) -> float: ...

    @property
    def error(self) -> str | None: ...


class ExpectedError(Exception):
    """The expected-result file cannot be used; the message says why."""


@dataclass(frozen=True)
class Expected:
    """The CER each image read with when the expectation was written, and their mean."""

    images: Mapping[str, float]
    mean_cer: float


def expected_from(results: Sequence[Scored]) -> Expected:
    """The expectation a run sets: its own CER per image and mean."""
    cers = {r.file: round(r.cer, 6) for r in results}
    return Expected(images=cers, mean_cer=round(statistics.fmean(cers.values()), 6) if cers else 0.0)


def dumps(expected: Expected, manifest: str) -> str:
    """The committed form: sorted, one image a line, so a diff shows what moved."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "manifest": manifest,
        "mean_cer": expected.mean_cer,
        "images": dict(sorted(expected.images.items())),
    }
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def load(path: Path) -> Expected:
    """Read an expected-result file written by `dumps` (`ocrmesh eval --write-expected`)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExpectedError(f"cannot read the expected result {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ExpectedError(f"{path}: not JSON ({exc.msg})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ExpectedError(
            f"{path}: not an expected result of format {FORMAT} (write one with --write-expected)"
        )
    images = document.get("images")
    mean = document.get("mean_cer")
    if not isinstance(images, dict) or not isinstance(mean, int | float):
        raise ExpectedError(f'{path}: needs "images" (file -> CER) and "mean_cer"')
    try:
        return Expected(images={str(k): float(v) for k, v in images.items()}, mean_cer=float(mean))
    except (TypeError, ValueError) as exc:
        raise ExpectedError(f"{path}: every image's CER must be a number ({exc})") from exc


def check(
    expected: Expected,
    results: Sequence[Scored],
    image_tolerance: float = IMAGE_TOLERANCE,
    mean_tolerance: float = MEAN_TOLERANCE,
) -> list[str]:
    """What got worse, one sentence each; empty when the run is as good as expected.

    Fails on: an image that errored, one more than `image_tolerance` worse, one the expectation
    does not know or one it expects but the run lacks (the subset and its expectation must move
    together), and a mean CER more than `mean_tolerance` worse.
    """
    problems: list[str] = []
    seen = {r.file for r in results}
    for r in results:
        if r.error:
            problems.append(f"{r.file}: failed ({r.error})")
            continue
        before = expected.images.get(r.file)
        if before is None:
            problems.append(f"{r.file}: not in the expected result; write it again with --write-expected")
        elif r.cer > before + image_tolerance:
            problems.append(f"{r.file}: CER {r.cer:.3f}, expected at most {before:.3f} + {image_tolerance}")
    problems.extend(
        f"{file}: expected but not in this run's manifest" for file in sorted(set(expected.images) - seen)
    )
    if results:
        mean = statistics.fmean(r.cer for r in results)
        if mean > expected.mean_cer + mean_tolerance:
            problems.append(
                f"mean CER {mean:.4f}, expected at most {expected.mean_cer:.4f} + {mean_tolerance}"
            )
    return problems
