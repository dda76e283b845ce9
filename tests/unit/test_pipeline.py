"""Padding and detection-size decisions (pure), band helpers, and the engine on two small real images."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from ocr_svc.detection_size import (
    DetSizing,
    Padding,
    det_input_size,
    max_scale,
    padding_px,
    percentile,
    probe_scale,
    refine_scale,
)
from ocr_svc.engine import Engine, EngineSettings
from ocr_svc.guardrails import Limits, decode
from ocr_svc.job import JobOptions
from ocr_svc.pipeline import add_new_boxes, band_tops, rapidocr_default_scale, text_cover, thickness
from tests.corpus import CORPUS

SIZING = DetSizing()


@pytest.mark.parametrize(
    ("height", "width", "pad"),
    [
        (11, 65, 8),  # a 65x11 crop: at least min_px
        (48, 136, 24),  # half the short side
        (78, 362, 32),  # capped at max_px
        (3000, 4000, 32),
        (1, 1, 8),
    ],
)
def test_padding_is_half_the_short_side_clamped(height: int, width: int, pad: int) -> None:
    assert padding_px(height, width, Padding()) == pad


def test_padding_can_be_turned_off() -> None:
    assert padding_px(11, 65, Padding(enabled=False)) == 0


def test_det_input_is_a_multiple_of_32_and_never_empty() -> None:
    assert det_input_size(430, 323, 1.0) == (416, 320)
    assert det_input_size(11, 65, 1.0) == (32, 64)
    assert det_input_size(3000, 4000, 0.31) == (928, 1248)
    for h, w, s in ((1, 1, 1.0), (7, 900, 0.5), (2000, 3, 2.0)):
        dh, dw = det_input_size(h, w, s)
        assert dh % 32 == 0 and dw % 32 == 0 and dh >= 32 and dw >= 32


def test_probe_keeps_small_images_and_shrinks_large_ones() -> None:
    assert probe_scale(430, 323, SIZING) == 1.0  # the common case: native size, no upscaling
    assert probe_scale(3000, 4000, SIZING) == pytest.approx((SIZING.probe_pixels / 12e6) ** 0.5)
    assert probe_scale(11, 65, SIZING) == pytest.approx(32 / 11)  # the detector's smallest input


def test_upscaling_never_exceeds_rapidocrs_own_rule() -> None:
    # RapidOCR scales the short side to 736: we may scale less, never more.
    assert max_scale(430, 323, SIZING) == pytest.approx(736 / 323)
    assert max_scale(800, 1200, SIZING) == 1.0  # short side already above 736: no upscaling
    assert max_scale(54, 1167, SIZING) <= SIZING.max_upscale
    h, w = 3000, 4000
    assert h * w * max_scale(h, w, SIZING) ** 2 <= SIZING.max_pixels * 1.0001


def test_text_near_the_detection_floor_asks_for_a_larger_pass() -> None:
    # 323x430 e-commerce banner: the thinnest lines found at native size are 19-20 px thick.
    better = refine_scale(430, 323, 1.0, [19, 20, 25, 31, 35, 60, 100], SIZING)
    assert better is not None
    assert 1.4 < better <= 736 / 323
    # Big enough text: the first pass stands (the fast common case).
    assert refine_scale(430, 323, 1.0, [34, 40, 48, 60], SIZING) is None


def test_huge_glyphs_ask_for_a_smaller_pass() -> None:
    # 350 px tall characters are split into pieces by the detector: shrink them.
    smaller = refine_scale(503, 1890, 1.0, [380], SIZING)
    assert smaller is not None
    assert smaller == pytest.approx(SIZING.target_huge_px / 380)
    # But not so far that small text beside them drops under target_text_px.
    limited = refine_scale(503, 1890, 1.0, [40, 380, 390, 400, 400], SIZING)
    assert limited is None or limited * 40 >= SIZING.target_text_px * 0.99


def test_nothing_found_looks_again_larger_once() -> None:
    assert refine_scale(48, 136, 1.0, [], SIZING) == pytest.approx(max_scale(48, 136, SIZING))
    large = refine_scale(3000, 4000, probe_scale(3000, 4000, SIZING), [], SIZING)
    assert large is not None and large <= 1.0
    # Already at the largest scale allowed: no second pass.
    assert refine_scale(800, 1200, 1.0, [], SIZING) is None


def test_sizing_is_validated() -> None:
    with pytest.raises(ValueError, match="min_text_px"):
        DetSizing(min_text_px=50, target_text_px=30)
    with pytest.raises(ValueError, match="probe_pixels"):
        DetSizing(probe_pixels=10)


def test_percentile() -> None:
    assert percentile([5.0], 10) == 5.0
    assert percentile([10.0, 20.0, 30.0], 50) == 20.0
    assert percentile([0.0, 10.0], 10) == 0.0
    assert percentile([float(v) for v in range(11)], 10) == 1.0
    assert percentile([3.0, 1.0, 2.0], 90) == 2.0


def test_rapidocr_default_scale() -> None:
    assert rapidocr_default_scale(430, 323) == pytest.approx(736 / 323)
    assert rapidocr_default_scale(3000, 4000) == pytest.approx(0.5)


def test_bands_cover_the_input_with_overlap() -> None:
    assert band_tops(500, 640, 128) == [0]
    tops = band_tops(1568, 640, 128)
    assert tops[0] == 0 and tops[-1] == 1568 - 640
    assert all(b - a <= 640 - 128 for a, b in itertools.pairwise(tops))


def test_band_boxes_are_added_only_where_nothing_was_found() -> None:
    def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    found = np.array([box(0, 0, 100, 20)], dtype=np.float32)
    extra = np.array([box(5, 2, 95, 18), box(0, 50, 100, 70)], dtype=np.float32)
    merged, scores = add_new_boxes(found, [0.9], extra, [0.8, 0.7])
    assert len(merged) == 2 and scores == [0.9, 0.7]
    assert thickness(merged) == pytest.approx([20.0, 20.0])
    # Bands are only tried where the text found covers little of the image.
    assert text_cover(merged, 100, 200) == pytest.approx(4000 / 20000)
    assert text_cover(np.zeros((0, 4, 2), dtype=np.float32), 100, 200) == 0.0


# The engine itself, in-process, on two small real images (a few seconds).


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield Engine(EngineSettings(device="cpu", threads=1))


def load(name: str) -> np.ndarray:
    return decode((CORPUS / "real" / name).read_bytes(), Limits(), max_side=4096).array


def test_a_tight_tiny_crop_is_read(engine: Engine) -> None:
    # 65x11 px, text touching the edges: plain RapidOCR finds no box at all.
    assert engine.run(load("rapidocr_short.png"), JobOptions()).texts == ["中国网络空间安全"]


def test_per_request_options_do_not_affect_the_next_request(engine: Engine) -> None:
    image = load("rapidocr_ch_en_num.jpg")
    before = engine.run(image, JobOptions())
    assert len(before.lines) >= 16 and before.texts[0] == "正品促销"
    assert all(len(line.box) == 4 for line in before.lines)  # 4 corners, each an (x, y) point

    no_det = engine.run(image, JobOptions(use_det=False, min_score=0.0))
    assert len(no_det.lines) == 1  # the whole image read as one line
    assert no_det.lines[0].box == ((0.0, 0.0), (323.0, 0.0), (323.0, 430.0), (0.0, 430.0))
    strict = engine.run(image, JobOptions(min_score=0.999, use_cls=False))
    assert len(strict.lines) < len(before.lines)
    boxes_only = engine.run(image, JobOptions(use_rec=False))
    assert boxes_only.lines and all(text == "" for text in boxes_only.texts)
    no_boxes = engine.run(image, JobOptions(return_boxes=False))
    assert no_boxes.lines and all(line.box == () for line in no_boxes.lines)

    after = engine.run(image, JobOptions())
    fresh = Engine(EngineSettings(device="cpu", threads=1)).run(image, JobOptions())
    assert after.texts == before.texts == fresh.texts
    assert [line.box for line in after.lines] == [line.box for line in before.lines]
