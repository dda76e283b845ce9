"""The OCR pipeline around RapidOCR's models: pad, size and run detection, classify, recognise, order."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from rapidocr.ch_ppocr_det.utils import DBPostProcess
from rapidocr.ch_ppocr_rec import TextRecInput
from rapidocr.utils.process_img import get_rotate_crop_image

from ocr_svc.detection_size import det_input_size, padding_px, probe_scale, refine_scale
from ocr_svc.job import DEFAULT_MIN_SCORE, Box, JobOptions, Line, Reading, box_from_corners
from ocr_svc.line_recognition import read_lines
from ocr_svc.pipeline_settings import PipelineSettings
from ocr_svc.reading_order import reading_order

Image = npt.NDArray[np.uint8]
Boxes = npt.NDArray[np.float32]  # (N, 4, 2) corners, clockwise from top-left


@dataclass
class DetPass:
    """One run of the detector: the scale asked for, the input size used, what it found."""

    scale: float
    input_hw: tuple[int, int]
    boxes: int
    ms: float
    kind: str = "whole"  # or "bands"


@dataclass
class Models:
    """RapidOCR's three stages, loaded (each is stateless per call when used as below)."""

    det: Any
    cls: Any
    rec: Any

    @classmethod
    def of(cls, ocr: Any) -> Models:
        """The loaded detector, classifier and recogniser of a RapidOCR instance."""
        return cls(det=ocr._load_det_model(), cls=ocr._load_cls_model(), rec=ocr._load_rec_model())


def as_bgr(image: npt.NDArray[Any]) -> Image:
    """H×W×3 uint8 BGR from gray, BGR or BGRA input."""
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    return np.ascontiguousarray(image, dtype=np.uint8)


def pad_image(image: Image, pad: int) -> Image:
    """`pad` pixels on every side, repeating the edge pixels (text touching the edge stays text)."""
    if pad <= 0:
        return image
    return np.asarray(cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE), dtype=np.uint8)


def resize_for_det(image: Image, input_hw: tuple[int, int]) -> Image:
    """`image` at the detector's input size (area averaging when shrinking)."""
    height, width = input_hw
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, (width, height), interpolation=interpolation), dtype=np.uint8)


def det_tensor(resized: Image) -> npt.NDArray[np.float32]:
    """The detector's input: scaled to [-1, 1], NCHW (RapidOCR's DetPreProcess after its resize)."""
    tensor = resized.astype(np.float32) * np.float32(2 / 255) - np.float32(1.0)
    return np.ascontiguousarray(tensor.transpose(2, 0, 1)[None])


def find_boxes(det: Any, resized: Image, settings: PipelineSettings) -> tuple[Boxes, list[float]]:
    """Boxes and scores in the coordinates of `resized` (already the detector's input size)."""
    preds = det.session(det_tensor(resized))
    # A fresh post-processor per call: its thresholds come from settings, never from a past call.
    post = DBPostProcess(
        thresh=settings.det_thresh,
        box_thresh=settings.box_thresh,
        max_candidates=settings.max_candidates,
        unclip_ratio=settings.unclip_ratio,
        score_mode="fast",
        use_dilation=True,
    )
    raw_boxes, scores = post(preds, resized.shape[:2])
    return np.asarray(raw_boxes, dtype=np.float32).reshape(-1, 4, 2), [float(v) for v in scores]


def to_image_coords(boxes: Boxes, input_hw: tuple[int, int], height: int, width: int) -> Boxes:
    """Boxes from detector-input pixels to image pixels."""
    factor = np.array([width / input_hw[1], height / input_hw[0]], dtype=np.float32)
    return np.asarray(boxes * factor, dtype=np.float32)


def detect(
    det: Any, image: Image, scale: float, settings: PipelineSettings
) -> tuple[Boxes, list[float], DetPass]:
    """Boxes (in `image` coordinates) and scores found by detection at `scale`."""
    started = time.perf_counter()
    height, width = image.shape[:2]
    input_hw = det_input_size(height, width, scale)
    boxes, scores = find_boxes(det, resize_for_det(image, input_hw), settings)
    boxes = to_image_coords(boxes, input_hw, height, width)
    return boxes, scores, DetPass(scale, input_hw, len(boxes), (time.perf_counter() - started) * 1000)


def band_tops(total: int, band: int, overlap: int) -> list[int]:
    """Top rows of overlapping bands `band` high covering `total` rows (the last one flush with the end)."""
    if total <= band:
        return [0]
    step = band - overlap
    tops = list(range(0, total - band, step))
    return [*tops, total - band]


def detect_bands(
    det: Any, image: Image, scale: float, settings: PipelineSettings
) -> tuple[Boxes, list[float], DetPass]:
    """Detection at `scale` in overlapping full-width horizontal bands.

    On a large input the detector's response to small text is weaker than on a crop of it (the
    whole-image context damps it): bands find lines a single pass misses. A box belongs to the
    band whose middle part holds its centre; boxes cut by a band's inner edge are dropped (the
    neighbouring band holds them whole).
    """
    started = time.perf_counter()
    height, width = image.shape[:2]
    input_hw = det_input_size(height, width, scale)
    resized = resize_for_det(image, input_hw)
    band, overlap = settings.band_px, settings.band_overlap_px
    tops = band_tops(input_hw[0], band, overlap)
    found: list[npt.NDArray[np.float32]] = []
    found_scores: list[float] = []
    for k, top in enumerate(tops):
        boxes, scores = find_boxes(det, resized[top : top + band], settings)
        low = top + (overlap / 2 if k > 0 else 0.0)
        high = top + band - (overlap / 2 if k < len(tops) - 1 else 0.0)
        for box, score in zip(boxes, scores, strict=True):
            ys = box[:, 1]
            cut = (k > 0 and ys.min() <= 1) or (k < len(tops) - 1 and ys.max() >= band - 2)
            centre = top + float(ys.mean())
            if not cut and low <= centre < high:
                found.append(box + np.array([0, top], dtype=np.float32))
                found_scores.append(score)
    boxes = to_image_coords(np.asarray(found, dtype=np.float32).reshape(-1, 4, 2), input_hw, height, width)
    elapsed = (time.perf_counter() - started) * 1000
    return boxes, found_scores, DetPass(scale, input_hw, len(boxes), elapsed, "bands")


def add_new_boxes(
    boxes: Boxes, scores: list[float], extra: Boxes, extra_scores: list[float], covered: float = 0.3
) -> tuple[Boxes, list[float]]:
    """`boxes` plus those of `extra` that do not overlap them (by `covered` of their own area,
    on bounding rectangles)."""
    if len(extra) == 0:
        return boxes, scores
    if len(boxes) == 0:
        return extra, extra_scores
    lo, hi = boxes.min(axis=1), boxes.max(axis=1)  # (N, 2) each
    keep = []
    for i, box in enumerate(extra):
        e_lo, e_hi = box.min(axis=0), box.max(axis=0)
        inter = np.clip(np.minimum(hi, e_hi) - np.maximum(lo, e_lo), 0, None).prod(axis=1)
        area = max(float(np.prod(e_hi - e_lo)), 1e-6)
        if float(inter.max()) < covered * area:
            keep.append(i)
    merged = np.concatenate([boxes, extra[keep]]) if keep else boxes
    return merged, scores + [extra_scores[i] for i in keep]


def thickness(boxes: Boxes) -> list[float]:
    """Each box's short side (mean of opposite sides), in the boxes' own pixels."""
    if len(boxes) == 0:
        return []
    sides = np.linalg.norm(boxes - np.roll(boxes, -1, axis=1), axis=2)  # (N, 4)
    along = (sides[:, 0] + sides[:, 2]) / 2
    across = (sides[:, 1] + sides[:, 3]) / 2
    return [float(v) for v in np.minimum(along, across)]


def text_cover(boxes: Boxes, height: int, width: int) -> float:
    """Share of the image covered by the boxes' bounding rectangles (overlaps counted twice)."""
    if len(boxes) == 0:
        return 0.0
    sizes = boxes.max(axis=1) - boxes.min(axis=1)
    return float((sizes[:, 0] * sizes[:, 1]).sum()) / max(1, height * width)


def rapidocr_default_scale(height: int, width: int) -> float:
    """RapidOCR's own choice: long side capped at 2000, then the short side scaled to 736."""
    scale = min(1.0, 2000 / max(height, width, 1))
    short = min(height, width) * scale
    return scale * (736 / short if short < 736 else 1.0)


def detect_sized(
    det: Any, image: Image, settings: PipelineSettings
) -> tuple[Boxes, list[float], list[DetPass]]:
    """Detection at a size chosen from the image and the text it holds (one or two passes)."""
    height, width = image.shape[:2]
    if not settings.adaptive_det:
        boxes, scores, done = detect(det, image, rapidocr_default_scale(height, width), settings)
        return boxes, scores, [done]
    scale = probe_scale(height, width, settings.det_sizing)
    boxes, scores, done = detect(det, image, scale, settings)
    passes = [done]
    in_det_px = done.input_hw[0] / height
    better = refine_scale(
        height, width, scale, [t * in_det_px for t in thickness(boxes)], settings.det_sizing
    )
    if better is not None:
        boxes, scores, done = detect(det, image, better, settings)
        passes.append(done)
    if (
        settings.bands
        and done.scale < 1.0
        and done.input_hw[0] >= settings.band_min_height_px
        and text_cover(boxes, height, width) < settings.band_max_cover
    ):
        band_boxes, band_scores, banded = detect_bands(det, image, done.scale, settings)
        boxes, scores = add_new_boxes(boxes, scores, band_boxes, band_scores)
        banded.boxes = len(boxes) - done.boxes
        passes.append(banded)
    return boxes, scores, passes


def crop_lines(image: Image, boxes: Boxes) -> list[Image]:
    """Each box cut out and straightened; boxes 1.5 times taller than wide are turned to lie flat."""
    return [np.asarray(get_rotate_crop_image(image, box.copy()), dtype=np.uint8) for box in boxes]


def classify(cls: Any, crops: list[Image]) -> tuple[list[Image], list[tuple[int, Image]], float]:
    """Crops turned upright by the angle classifier, the ones it turned (index, crop as it was)
    and the time it took."""
    out = cls(crops)
    turned = [
        (i, crops[i])
        for i, (label, score) in enumerate(out.cls_res)
        if "180" in str(label) and float(score) > cls.cls_thresh
    ]
    return list(out.img_list), turned, float(out.elapse) * 1000


def recognise(
    rec: Any, crops: list[Image], turned: list[tuple[int, Image]], settings: PipelineSettings
) -> tuple[list[str], list[float], float]:
    """Text and score of each crop, and the time it took.

    The angle classifier is sometimes sure of a wrong answer on small or blurred crops: the crops
    it turned are also read as they were, and the reading with the higher score is kept.
    """
    started = time.perf_counter()
    everything = crops + [crop for _, crop in turned]
    if settings.tight_rec:
        all_texts, all_scores = read_lines(rec, everything, settings.rec_batch, settings.rec_min_width)
    else:
        out = rec(TextRecInput(img=everything, return_word_box=False))
        all_texts, all_scores = [str(t) for t in out.txts], [float(s) for s in out.scores]
    texts, scores = all_texts[: len(crops)], all_scores[: len(crops)]
    for k, (i, _) in enumerate(turned):
        other_text, other_score = all_texts[len(crops) + k], all_scores[len(crops) + k]
        if other_score > scores[i]:
            texts[i], scores[i] = other_text, other_score
    return texts, scores, (time.perf_counter() - started) * 1000


def unpad_boxes(boxes: Boxes, pad: int, height: int, width: int) -> Boxes:
    """Boxes found in the padded image, moved back into the original one and clipped to it."""
    moved = boxes - np.float32(pad)
    moved[..., 0] = np.clip(moved[..., 0], 0, width)
    moved[..., 1] = np.clip(moved[..., 1], 0, height)
    return moved


def whole_image_box(height: int, width: int) -> Box:
    return ((0.0, 0.0), (float(width), 0.0), (float(width), float(height)), (0.0, float(height)))


def order_lines(lines: Sequence[Line], settings: PipelineSettings) -> list[Line]:
    """Lines in reading order (unchanged when any has no box)."""
    if not settings.reading_order or len(lines) < 2 or any(len(line.box) < 4 for line in lines):
        return list(lines)
    # reading_order is pure geometry on flat quads (x0, y0, ..., x3, y3).
    quads = [[v for point in line.box for v in point] for line in lines]
    return [lines[i] for i in reading_order(quads, settings.order)]


def run_pipeline(
    ocr: Any, image: npt.NDArray[Any], options: JobOptions, settings: PipelineSettings
) -> Reading:
    """OCR one image with a RapidOCR-like engine's models; nothing about the engine is changed.

    Lines come in reading order, with boxes in the coordinates of `image` (none when
    `options.return_boxes` is false); `options.min_score` None means DEFAULT_MIN_SCORE.
    """
    min_score = DEFAULT_MIN_SCORE if options.min_score is None else options.min_score
    models = Models.of(ocr)
    bgr = as_bgr(image)
    height, width = bgr.shape[:2]
    det_ms = cls_ms = rec_ms = 0.0
    decided: dict[str, Any] = {"pad": 0, "det_passes": []}

    if options.use_det:
        pad = padding_px(height, width, settings.padding)
        padded = pad_image(bgr, pad)
        boxes, det_scores, passes = detect_sized(models.det, padded, settings)
        det_ms = sum(p.ms for p in passes)
        decided.update(
            pad=pad,
            det_passes=[
                {"kind": p.kind, "scale": round(p.scale, 4), "input_hw": list(p.input_hw), "boxes": p.boxes}
                for p in passes
            ],
        )
        crops = crop_lines(padded, boxes) if len(boxes) else []
        line_boxes = [box_from_corners(box) for box in unpad_boxes(boxes, pad, height, width)]
    else:
        crops, det_scores, line_boxes = [bgr], [1.0], [whole_image_box(height, width)]

    if crops and options.use_cls:
        crops, flipped, cls_ms = classify(models.cls, crops)
    else:
        flipped = []

    lines: list[Line] = []
    if crops and options.use_rec:
        texts, scores, rec_ms = recognise(models.rec, crops, flipped, settings)
        for text, score, box in zip(texts, scores, line_boxes, strict=True):
            if text.strip() and score >= min_score:
                lines.append(Line(text, score, box))
    elif crops and options.use_det:
        lines = [Line("", score, box) for score, box in zip(det_scores, line_boxes, strict=True)]

    ordered = order_lines(lines, settings)
    if not options.return_boxes:
        ordered = [Line(line.text, line.score) for line in ordered]
    return Reading(tuple(ordered), det_ms=det_ms, cls_ms=cls_ms, rec_ms=rec_ms, decided=decided)
