"""Text recognition of line crops in small batches, each padded only to its own widest crop."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

# RapidOCR's TextRecognizer pads every batch to at least 320 px wide (PaddleOCR's rec_img_shape)
# and to its widest crop: short lines, the common case, then pay for 320 px of mostly padding.
# It has no option to pad less, so this module does its resize/normalise/pad step itself and
# reuses its ONNX session and CTC decoder unchanged.

REC_HEIGHT = 48  # the PP-OCR recogniser's input height
WIDTH_STEP = 8  # batch widths rounded up to this (fewer distinct input shapes)


def input_width(crop: npt.NDArray[np.uint8], height: int = REC_HEIGHT) -> int:
    """Width of `crop` scaled to `height` rows, at least 1 px."""
    rows, cols = int(crop.shape[0]), int(crop.shape[1])
    return max(1, math.ceil(height * cols / max(1, rows)))


def batches(widths: list[int], size: int) -> list[list[int]]:
    """Indices of the crops grouped `size` at a time in order of width (similar widths pad least)."""
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    return [order[k : k + size] for k in range(0, len(order), max(1, size))]


def batch_tensor(
    crops: list[npt.NDArray[np.uint8]], widths: list[int], min_width: int
) -> npt.NDArray[np.float32]:
    """NCHW float input scaled to [-1, 1] (RapidOCR's resize_norm_img), zero-padded on the right
    to the widest crop (at least `min_width`) rounded up to WIDTH_STEP."""
    width = math.ceil(max(min_width, *widths) / WIDTH_STEP) * WIDTH_STEP
    tensor = np.zeros((len(crops), 3, REC_HEIGHT, width), dtype=np.float32)
    for j, (crop, w) in enumerate(zip(crops, widths, strict=True)):
        resized = cv2.resize(crop, (w, REC_HEIGHT)).astype(np.float32)
        tensor[j, :, :, :w] = resized.transpose(2, 0, 1) * np.float32(2 / 255) - np.float32(1.0)
    return tensor


def read_lines(
    rec: Any, crops: list[npt.NDArray[np.uint8]], batch: int, min_width: int
) -> tuple[list[str], list[float]]:
    """Text and score of each crop, with RapidOCR's recogniser `rec` (its session and decoder), in
    batches of `batch` crops padded to their widest one but at least `min_width` px wide."""
    widths = [input_width(crop) for crop in crops]
    texts, scores = [""] * len(crops), [0.0] * len(crops)
    for group in batches(widths, batch):
        tensor = batch_tensor([crops[i] for i in group], [widths[i] for i in group], min_width)
        decoded, _ = rec.postprocess_op(rec.session(tensor), False)
        for i, (text, score) in zip(group, decoded, strict=True):
            texts[i], scores[i] = str(text), float(score)
    return texts, scores
