"""Pure decisions on how much to pad an image and at what scale to run text detection on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The DB detector downsamples by 32: its input sides must be multiples of 32.
DET_STRIDE = 32


@dataclass(frozen=True)
class DetSizing:
    """How the detection input size is chosen; text sizes are box thicknesses in detector pixels.

    Detection runs first at the image's own size (scaled down to `probe_pixels` when larger,
    never up). The text it finds says whether that was right: if the thinnest text is close to
    what the detector can still see (`min_text_px`), or nothing was found in a small image, it
    runs again scaled so that this text is `target_text_px` thick; if the text is huge
    (`huge_text_px`, where glyphs get split into pieces), it runs again scaled down.

    It never scales up more than RapidOCR's own rule would (short side to `upscale_min_side`),
    nor past `max_upscale`, `max_pixels` or `max_side`.
    """

    probe_pixels: int = 1_200_000
    min_text_px: float = 24.0
    target_text_px: float = 34.0
    huge_text_px: float = 240.0
    target_huge_px: float = 120.0
    max_upscale: float = 4.0
    max_pixels: int = 3_200_000
    max_side: int = 4096
    upscale_min_side: int = 736  # RapidOCR's Det.limit_side_len (limit_type min)
    small_percentile: float = 10.0
    large_percentile: float = 90.0
    min_gain: float = 1.25  # a second pass only when the scale changes by at least this factor

    def __post_init__(self) -> None:
        if self.probe_pixels < DET_STRIDE * DET_STRIDE or self.max_pixels < self.probe_pixels:
            raise ValueError("DetSizing needs 32*32 <= probe_pixels <= max_pixels")
        if not 0 < self.min_text_px <= self.target_text_px < self.target_huge_px < self.huge_text_px:
            raise ValueError(
                "DetSizing needs 0 < min_text_px <= target_text_px < target_huge_px < huge_text_px"
            )
        if self.max_upscale < 1.0 or self.min_gain < 1.0:
            raise ValueError("DetSizing.max_upscale and min_gain must be at least 1")


@dataclass(frozen=True)
class Padding:
    """Border added around every image before detection (text touching the edge is not found)."""

    enabled: bool = True
    fraction: float = 0.5  # of the shorter side ...
    min_px: int = 8  # ... but at least this ...
    max_px: int = 32  # ... and at most this


def padding_px(height: int, width: int, padding: Padding) -> int:
    """Pixels of border on each side: half the short side, clamped to [min_px, max_px]."""
    if not padding.enabled:
        return 0
    return int(min(padding.max_px, max(padding.min_px, round(padding.fraction * min(height, width)))))


def det_input_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the detector input for `scale`: rounded to multiples of 32, at least 32."""
    return (
        max(DET_STRIDE, round(height * scale / DET_STRIDE) * DET_STRIDE),
        max(DET_STRIDE, round(width * scale / DET_STRIDE) * DET_STRIDE),
    )


def max_scale(height: int, width: int, sizing: DetSizing) -> float:
    """The largest scale allowed: RapidOCR's upscale (short side to 736) or none, within the pixel
    budget, longest side and upscale limits."""
    return min(
        max(1.0, sizing.upscale_min_side / max(1, min(height, width))),
        sizing.max_upscale,
        math.sqrt(sizing.max_pixels / max(1, height * width)),
        sizing.max_side / max(height, width, 1),
    )


def probe_scale(height: int, width: int, sizing: DetSizing) -> float:
    """The first detection scale: the image as it is, or scaled down to `probe_pixels`.

    Images thinner than 32 px are scaled up to 32 (the detector's smallest input).
    """
    scale = min(1.0, math.sqrt(sizing.probe_pixels / max(1, height * width)))
    floor = DET_STRIDE / max(1, min(height, width))
    return min(max(scale, floor), max_scale(height, width, sizing))


def percentile(values: Sequence[float], pct: float) -> float:
    """The value at `pct` percent of the sorted non-empty values, rounding the rank down (always
    one of the values: with few boxes, the 10th percentile is the smallest one)."""
    ordered = sorted(values)
    return ordered[math.floor((len(ordered) - 1) * pct / 100)]


def refine_scale(
    height: int, width: int, scale: float, thickness_px: Sequence[float], sizing: DetSizing
) -> float | None:
    """The scale for a second detection pass, or None when the pass at `scale` is good enough.

    `thickness_px` are the found boxes' thicknesses (short side) in detector pixels at `scale`.
    """
    ceiling = max_scale(height, width, sizing)
    if not thickness_px:
        # Nothing found. Text may be too small to see at this scale: look once more, larger.
        return ceiling if ceiling >= scale * sizing.min_gain else None
    small = percentile(thickness_px, sizing.small_percentile)
    large = percentile(thickness_px, sizing.large_percentile)
    if small < sizing.min_text_px:
        target = min(scale * sizing.target_text_px / small, ceiling)
        return target if target >= scale * sizing.min_gain else None
    if large > sizing.huge_text_px:
        # Shrink huge glyphs, but keep the small text at least target_text_px thick.
        target = scale * max(sizing.target_huge_px / large, sizing.target_text_px / small)
        return target if target * sizing.min_gain <= scale else None
    return None
