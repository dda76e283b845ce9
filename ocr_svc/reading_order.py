"""Reading order of text boxes: rows, multi-column pages and vertical right-to-left columns (pure)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Quad = Sequence[float]  # x0, y0, x1, y1, x2, y2, x3, y3 (four corners, any start, any direction)


@dataclass(frozen=True)
class OrderSettings:
    """Thresholds of the layout analysis; lengths are in units of the median text thickness."""

    aspect: float = 1.5  # a box this many times taller than wide is vertical text (and vice versa)
    column_gap: float = 0.3  # a vertical whitespace gap this wide can separate columns ...
    crossing_share: float = 0.05  # ... even if this share of the boxes (at least one) reach into it ...
    intrusion: float = 1.0  # ... by at most this much on one side (a headline across it cannot)
    column_rows: int = 3  # columns are read one after another only if each has this many rows ...
    column_width: float = 6.0  # ... and is this wide (narrower side-by-side blocks are read by rows)
    shrink: float = 0.12  # boxes are shrunk by this much of their thickness on each side
    row_overlap: float = 0.5  # boxes overlapping this much of the thinner one share a row
    band_gap: float = 0.5  # horizontal gaps at least this share of the widest are cut at first
    max_deskew_deg: float = 20.0  # larger page rotations are left alone


@dataclass(frozen=True)
class Rect:
    """A box as the layout sees it: axis-aligned extent after deskew, and its shape."""

    index: int
    x0: float
    y0: float
    x1: float
    y1: float
    thickness: float
    vertical: bool
    horizontal: bool

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


def _points(quad: Quad) -> list[tuple[float, float]]:
    values = [float(v) for v in quad]
    if len(values) < 8:
        raise ValueError(f"a box needs 8 numbers (4 corners), got {len(values)}")
    return [(values[i], values[i + 1]) for i in range(0, 8, 2)]


def _side_lengths(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(mean of sides 0-1 and 2-3, mean of sides 1-2 and 3-0)."""
    d = [math.dist(points[i], points[(i + 1) % 4]) for i in range(4)]
    return (d[0] + d[2]) / 2, (d[1] + d[3]) / 2


def _fold(angle: float) -> float:
    """An edge direction folded into (-90, 90] degrees (an edge and its reverse are the same line)."""
    if angle <= -math.pi / 2:
        return angle + math.pi
    if angle > math.pi / 2:
        return angle - math.pi
    return angle


def page_skew(quads: Sequence[Quad], settings: OrderSettings = OrderSettings()) -> float:
    """Length-weighted median angle (radians) of clearly horizontal text lines.

    Only boxes at least 2 * `aspect` times longer than thick, with the long edge within 45 degrees
    of horizontal, vote. 0.0 when none do or the angle is beyond `max_deskew_deg`.
    """
    votes: list[tuple[float, float]] = []
    for quad in quads:
        pts = _points(quad)
        along_01, along_12 = _side_lengths(pts)
        if along_01 >= along_12:
            long_side, short_side, (a, b) = along_01, along_12, (pts[0], pts[1])
        else:
            long_side, short_side, (a, b) = along_12, along_01, (pts[1], pts[2])
        if long_side < 2 * settings.aspect * short_side:
            continue
        angle = _fold(math.atan2(b[1] - a[1], b[0] - a[0]))
        if abs(angle) < math.pi / 4:
            votes.append((angle, long_side))
    if not votes:
        return 0.0
    votes.sort()
    half = sum(weight for _, weight in votes) / 2
    running = 0.0
    median = votes[-1][0]
    for angle, weight in votes:
        running += weight
        if running >= half:
            median = angle
            break
    return median if abs(median) <= math.radians(settings.max_deskew_deg) else 0.0


def to_rects(quads: Sequence[Quad], settings: OrderSettings = OrderSettings()) -> list[Rect]:
    """Axis-aligned rectangles of the boxes in a frame rotated so text lines run horizontally."""
    skew = page_skew(quads, settings)
    cos, sin = math.cos(-skew), math.sin(-skew)
    rects: list[Rect] = []
    for index, quad in enumerate(quads):
        pts = [(x * cos - y * sin, x * sin + y * cos) for x, y in _points(quad)]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        width, height = max(xs) - min(xs), max(ys) - min(ys)
        rects.append(
            Rect(
                index=index,
                x0=min(xs),
                y0=min(ys),
                x1=max(xs),
                y1=max(ys),
                thickness=max(1e-6, min(width, height)),
                vertical=height >= settings.aspect * width,
                horizontal=width >= settings.aspect * height,
            )
        )
    return rects


def is_vertical_layout(rects: Sequence[Rect]) -> bool:
    """Whether vertical boxes (columns of text) outweigh horizontal ones, by length."""
    vertical = sum(r.y1 - r.y0 for r in rects if r.vertical)
    horizontal = sum(r.x1 - r.x0 for r in rects if r.horizontal)
    return vertical > horizontal


def gaps(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Uncovered stretches between the union of intervals, in increasing order."""
    result: list[tuple[float, float]] = []
    ordered = sorted(intervals)
    if not ordered:
        return result
    end = ordered[0][1]
    for start, stop in ordered[1:]:
        if start > end:
            result.append((end, start))
        end = max(end, stop)
    return result


def _shrunk_x(rect: Rect, settings: OrderSettings) -> tuple[float, float]:
    pad = min(settings.shrink * rect.thickness, (rect.x1 - rect.x0) / 2)
    return rect.x0 + pad, rect.x1 - pad


def _shrunk_y(rect: Rect, settings: OrderSettings) -> tuple[float, float]:
    pad = min(settings.shrink * rect.thickness, (rect.y1 - rect.y0) / 2)
    return rect.y0 + pad, rect.y1 - pad


def valleys(intervals: Sequence[tuple[float, float]], allowance: int) -> list[tuple[float, float]]:
    """Stretches between the first start and the last end covered by at most `allowance` intervals."""
    events = sorted([(lo, 1) for lo, _ in intervals] + [(hi, -1) for _, hi in intervals])
    found: list[tuple[float, float]] = []
    depth = 0
    opened: float | None = None
    for position, step in events:
        depth += step
        if depth <= allowance and opened is None and step < 0:
            opened = position
        elif depth > allowance and opened is not None:
            if position > opened:
                found.append((opened, position))
            opened = None
    return found


def _x_cuts(rects: Sequence[Rect], vertical: bool, settings: OrderSettings) -> list[tuple[float, float]]:
    """Vertical whitespace that can separate columns, as (start, end) stretches, left to right.

    Up to `crossing_share` of the boxes may reach into a stretch (ragged or stray line ends), but
    only by `intrusion` on one side; a box across it with more than that on both sides (a
    headline over two columns) rules it out. Vertical text columns are tight: no box may cross.
    """
    unit = statistics.median(r.thickness for r in rects)
    spans = [_shrunk_x(r, settings) for r in rects]
    allowance = 0 if vertical else max(1, int(settings.crossing_share * len(rects)))
    reach = settings.intrusion * unit
    cuts: list[tuple[float, float]] = []
    for start, stop in valleys(spans, allowance):
        middle = (start + stop) / 2
        if not any(r.cx < middle for r in rects) or not any(r.cx > middle for r in rects):
            continue
        if any(lo < middle < hi and min(middle - lo, hi - middle) > reach for lo, hi in spans):
            continue
        cuts.append((start, stop))
    return cuts


def _split(rects: Sequence[Rect], cuts: Sequence[tuple[float, float]], key: str) -> list[list[Rect]]:
    """Rects grouped by which side of each cut their centre lies on, in increasing order."""
    parts: list[list[Rect]] = [[] for _ in range(len(cuts) + 1)]
    for rect in rects:
        centre = rect.cx if key == "x" else rect.cy
        slot = sum(1 for start, stop in cuts if centre > (start + stop) / 2)
        parts[slot].append(rect)
    return [part for part in parts if part]


def _cluster(rects: Sequence[Rect], axis: str, settings: OrderSettings) -> list[list[Rect]]:
    """Rows (axis "y", top to bottom) or columns (axis "x", right to left) of boxes.

    Thin boxes found the rows: each box, thinnest first, joins a row whose founding box it
    overlaps by `row_overlap` of the thinner of the two (shrunk extents), or founds a new one. A
    box overlapping several rows (a big glyph, a drop cap) joins the first of them in reading
    order; two stacked small rows are never merged through a tall box that touches both.
    """
    shrunk = _shrunk_y if axis == "y" else _shrunk_x
    sign = 1.0 if axis == "y" else -1.0  # reading order along the axis: down, or right to left
    cores: list[tuple[float, float]] = []
    members: list[list[Rect]] = []
    for rect in sorted(rects, key=lambda r: r.thickness):
        lo, hi = shrunk(rect, settings)
        joined = [
            i
            for i, (c_lo, c_hi) in enumerate(cores)
            if min(hi, c_hi) - max(lo, c_lo) >= settings.row_overlap * max(1e-6, min(hi - lo, c_hi - c_lo))
        ]
        if joined:
            members[min(joined, key=lambda i: sign * (cores[i][0] + cores[i][1]))].append(rect)
        else:
            cores.append((lo, hi))
            members.append([rect])
    order = sorted(range(len(cores)), key=lambda i: sign * (cores[i][0] + cores[i][1]))
    return [members[i] for i in order]


def _rows_then_columns(rects: Sequence[Rect], vertical: bool, settings: OrderSettings) -> list[Rect]:
    """Fallback when no whitespace cut exists: rows top to bottom, left to right in a row; for
    vertical text, columns right to left, top to bottom in a column."""
    if vertical:
        return [r for column in _cluster(rects, "x", settings) for r in sorted(column, key=lambda r: r.cy)]
    return [r for row in _cluster(rects, "y", settings) for r in sorted(row, key=lambda r: r.cx)]


def _prose_columns(parts: Sequence[Sequence[Rect]], unit: float, settings: OrderSettings) -> bool:
    """Side-by-side parts are columns of running text: at least two have several rows and are
    wide. Otherwise (tables, label/value pairs, scattered words) they are read row by row."""
    columns = 0
    for part in parts:
        rows = len(_cluster(part, "y", settings))
        width = max(r.x1 for r in part) - min(r.x0 for r in part)
        if rows >= settings.column_rows and width >= settings.column_width * unit:
            columns += 1
    return columns >= 2


def _right_to_left(parts: Sequence[Sequence[Rect]]) -> bool:
    """Side-by-side parts are vertical columns: some hold vertical text, none horizontal text."""
    kinds = [
        "vertical" if is_vertical_layout(p) else "horizontal" if any(r.horizontal for r in p) else "none"
        for p in parts
    ]
    return "vertical" in kinds and "horizontal" not in kinds


def _x_parts(rects: Sequence[Rect], vertical: bool, settings: OrderSettings) -> list[list[Rect]]:
    """Side-by-side parts: split at whitespace `column_gap` wide, or at any gap beside a part
    that holds vertical text (a column of vertical text stands on its own)."""
    unit = statistics.median(r.thickness for r in rects)
    cuts = _x_cuts(rects, vertical, settings)
    slots: dict[int, list[Rect]] = {}
    for rect in rects:
        slots.setdefault(sum(1 for start, stop in cuts if rect.cx > (start + stop) / 2), []).append(rect)
    filled = sorted(slots)
    merged: list[list[Rect]] = [slots[filled[0]]]
    for before, after in itertools.pairwise(filled):
        part, previous = slots[after], merged[-1]
        widest = max(stop - start for start, stop in cuts[before:after])
        narrow = widest < (0.0 if vertical else settings.column_gap * unit)
        if narrow and not is_vertical_layout(previous) and not is_vertical_layout(part):
            merged[-1] = previous + part
        else:
            merged.append(part)
    return merged


def _order(rects: list[Rect], settings: OrderSettings) -> list[Rect]:
    if len(rects) <= 1:
        return rects
    unit = statistics.median(r.thickness for r in rects)
    vertical = is_vertical_layout(rects)
    y_gaps = gaps([_shrunk_y(r, settings) for r in rects])
    x_parts = _x_parts(rects, vertical, settings)
    if len(x_parts) > 1:
        single_rows = not y_gaps and all(len(_cluster(p, "y", settings)) == 1 for p in x_parts)
        mixed = any(is_vertical_layout(p) for p in x_parts)
        if vertical or mixed or single_rows or _prose_columns(x_parts, unit, settings):
            if _right_to_left(x_parts):
                x_parts.reverse()  # vertical columns read right to left
            return [r for part in x_parts for r in _order(part, settings)]
    if y_gaps:
        # The widest horizontal gaps first (a headline under or over several columns comes off
        # before the rows of the columns are looked at); the narrower ones in the parts.
        widest = max(stop - start for start, stop in y_gaps)
        cuts = [(start, stop) for start, stop in y_gaps if stop - start >= settings.band_gap * widest]
        y_parts = _split(rects, cuts, "y")
        if len(y_parts) > 1:
            return [r for part in y_parts for r in _order(part, settings)]
    return _rows_then_columns(rects, vertical, settings)


def reading_order(quads: Sequence[Quad], settings: OrderSettings = OrderSettings()) -> list[int]:
    """Indices of `quads` in reading order.

    Recursive whitespace cuts (XY-cut) on the deskewed boxes: horizontal cuts split a page into
    bands read top to bottom; vertical cuts split it into columns, read left to right, or right to
    left when they hold vertical (top-to-bottom) text. Side-by-side blocks of horizontal text are
    read as columns only when they look like running text (several rows, wide); otherwise row by
    row, so tables and label/value pairs keep their rows.
    """
    if not quads:
        return []
    return [r.index for r in _order(to_rects(quads, settings), settings)]
