"""Reading order on synthetic layouts: rows, prose columns, tables, vertical right-to-left, mixed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from ocr_svc.reading_order import gaps, page_skew, reading_order, valleys


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A box as the detector gives it: 4 corners clockwise from top-left, 8 numbers."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def ordered(boxes: dict[str, list[float]]) -> list[str]:
    names = list(boxes)
    return [names[i] for i in reading_order([boxes[n] for n in names])]


def shuffled(boxes: dict[str, list[float]], seed: int = 3) -> dict[str, list[float]]:
    """The same boxes in a scrambled order (the detector's order must not matter)."""
    import random

    items = list(boxes.items())
    random.Random(seed).shuffle(items)
    return dict(items)


def column(
    name: str, x0: float, x1: float, top: float, rows: int, pitch: float = 40, thick: float = 30
) -> dict[str, Any]:
    return {f"{name}{i}": rect(x0, top + i * pitch, x1, top + i * pitch + thick) for i in range(rows)}


def test_empty_and_single() -> None:
    assert reading_order([]) == []
    assert reading_order([rect(0, 0, 10, 5)]) == [0]


def test_bad_box_is_refused() -> None:
    with pytest.raises(ValueError, match="8 numbers"):
        reading_order([[0.0, 1.0, 2.0]])


def test_rows_top_to_bottom_left_to_right_despite_jitter() -> None:
    boxes = {
        "a": rect(10, 12, 80, 40),
        "b": rect(100, 8, 200, 36),  # same row, a little higher
        "c": rect(230, 15, 300, 42),
        "d": rect(10, 60, 300, 90),
        "e": rect(10, 110, 150, 140),
    }
    assert ordered(shuffled(boxes)) == ["a", "b", "c", "d", "e"]


def test_two_prose_columns_are_read_one_after_the_other() -> None:
    # Rows of the two columns sit on the same baselines, as in a typeset page.
    boxes = column("L", 0, 400, 0, 6) | column("R", 440, 840, 0, 6)
    assert ordered(shuffled(boxes)) == [f"L{i}" for i in range(6)] + [f"R{i}" for i in range(6)]


def test_headline_over_columns_and_footer_under_them() -> None:
    boxes = (
        {"headline": rect(0, 0, 840, 60)}
        | column("L", 0, 400, 100, 5)
        | column("R", 440, 840, 100, 5)
        | {"footer": rect(0, 330, 840, 360)}
    )
    expected = ["headline", *(f"L{i}" for i in range(5)), *(f"R{i}" for i in range(5)), "footer"]
    assert ordered(shuffled(boxes)) == expected


def test_a_line_reaching_into_the_gutter_does_not_merge_the_columns() -> None:
    boxes = column("L", 0, 400, 0, 8) | column("R", 440, 840, 0, 8)
    boxes["R0"] = rect(415, 0, 840, 30)  # a stray mark makes the first right line start early
    boxes["L3"] = rect(0, 120, 425, 150)  # and a left line end late
    assert ordered(shuffled(boxes)) == [f"L{i}" for i in range(8)] + [f"R{i}" for i in range(8)]


def test_label_value_pairs_are_read_row_by_row() -> None:
    # Narrow side-by-side blocks (a form, a price list) are not columns of running text.
    boxes: dict[str, list[float]] = {}
    for i in range(4):
        boxes[f"label{i}"] = rect(0, i * 40, 90, i * 40 + 30)
        boxes[f"value{i}"] = rect(300, i * 40, 380, i * 40 + 30)
    expected = [name for i in range(4) for name in (f"label{i}", f"value{i}")]
    assert ordered(shuffled(boxes)) == expected


def test_big_glyph_beside_two_small_rows_joins_the_first_row() -> None:
    # A drop cap or a big word next to two lines of small print.
    boxes = {
        "small_top_left": rect(0, 10, 60, 40),
        "big": rect(80, 0, 300, 90),
        "small_top_right": rect(320, 10, 380, 40),
        "small_bottom_left": rect(0, 50, 60, 80),
        "small_bottom_right": rect(320, 50, 380, 80),
    }
    expected = ["small_top_left", "big", "small_top_right", "small_bottom_left", "small_bottom_right"]
    assert ordered(shuffled(boxes)) == expected


def test_vertical_columns_right_to_left_top_to_bottom() -> None:
    boxes = {
        "right": rect(400, 0, 460, 600),
        "middle_top": rect(250, 0, 310, 280),
        "middle_bottom": rect(250, 300, 310, 600),
        "left": rect(100, 0, 160, 600),
    }
    assert ordered(shuffled(boxes)) == ["right", "middle_top", "middle_bottom", "left"]


def test_tight_vertical_columns_touching_each_other() -> None:
    boxes = {f"col{i}": rect(300 - i * 50, 0, 352 - i * 50, 500) for i in range(5)}
    assert ordered(shuffled(boxes)) == [f"col{i}" for i in range(5)]


def test_horizontal_title_over_vertical_columns() -> None:
    boxes = {
        "title": rect(50, 0, 450, 60),
        "c1": rect(380, 100, 440, 600),
        "c2": rect(280, 100, 340, 600),
        "c3": rect(180, 100, 240, 600),
    }
    assert ordered(shuffled(boxes)) == ["title", "c1", "c2", "c3"]


def test_vertical_column_beside_a_horizontal_block_is_read_on_its_own() -> None:
    # A vertical phrase to the left of a block of horizontal lines (a poster): the column is a unit
    # and comes first (left to right, as the block is horizontal text), then the block's rows.
    boxes = {
        "block_top": rect(140, 0, 450, 70),
        "block_middle": rect(170, 75, 450, 105),
        "block_big": rect(105, 110, 450, 280),
        "vertical": rect(0, 0, 112, 265),
    }
    assert ordered(shuffled(boxes)) == ["vertical", "block_top", "block_middle", "block_big"]


def rotate(box: Sequence[float], degrees: float, cx: float = 300, cy: float = 100) -> list[float]:
    a = math.radians(degrees)
    out: list[float] = []
    for i in range(0, 8, 2):
        x, y = box[i] - cx, box[i + 1] - cy
        out += [cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)]
    return out


def test_skewed_page_keeps_its_rows() -> None:
    # Two columns of long lines tilted by 7 degrees: their bounding rectangles overlap in y.
    straight = column("L", 0, 280, 0, 4, pitch=36) | column("R", 320, 600, 0, 4, pitch=36)
    tilted = {name: rotate(box, 7) for name, box in straight.items()}
    assert page_skew(list(tilted.values())) == pytest.approx(math.radians(7), abs=1e-3)
    assert ordered(shuffled(tilted)) == [f"L{i}" for i in range(4)] + [f"R{i}" for i in range(4)]


def test_gaps_and_valleys() -> None:
    assert gaps([(0, 10), (5, 20), (30, 40), (39, 50)]) == [(20, 30)]
    assert gaps([]) == []
    # Depth at most 1: the stretch where only one interval reaches in still counts.
    assert valleys([(0, 10), (0, 12), (20, 30), (8, 25)], 0) == []
    assert valleys([(0, 10), (0, 12), (20, 30), (18, 30)], 0) == [(12, 18)]
    assert valleys([(0, 10), (0, 12), (20, 30), (18, 30)], 1) == [(10, 20)]
