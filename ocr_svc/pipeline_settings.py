"""What the OCR pipeline does beyond plain RapidOCR: settings only.

Kept apart from `ocr_svc.pipeline` so that the OCR server process, which only passes these to its
workers, never imports OpenCV or RapidOCR (about 60 MiB per instance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ocr_svc.detection_size import DetSizing, Padding
from ocr_svc.reading_order import OrderSettings


@dataclass(frozen=True)
class PipelineSettings:
    """What the pipeline does beyond plain RapidOCR; every improvement can be turned off.

    `adaptive_det=False` detects once the way RapidOCR does by default (short side scaled to 736,
    long side capped at 2000); `bands=False` skips the second look, in horizontal bands, at images
    that were scaled down for detection and where the text found covers little of the image;
    `reading_order=False` keeps the detector's top-to-bottom, left-to-right box order; `padding`
    and `det_sizing` say how much.
    """

    padding: Padding = field(default_factory=Padding)
    adaptive_det: bool = True
    det_sizing: DetSizing = field(default_factory=DetSizing)
    bands: bool = True  # downscaled inputs at least band_min_height_px high are searched again in bands
    band_px: int = 640
    band_overlap_px: int = 128
    band_min_height_px: int = 800
    band_max_cover: float = 0.1  # ... when the text found covers less than this share of the image
    reading_order: bool = True
    order: OrderSettings = field(default_factory=OrderSettings)
    det_thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    # Recognition batches of `rec_batch` crops (1 measured fastest on CPU), padded only to their own
    # widest crop but at least `rec_min_width` px (the model reads short crops slightly differently
    # with less padding); tight_rec=False calls RapidOCR's recogniser (batches of 6, at least 320 px).
    tight_rec: bool = True
    rec_batch: int = 1
    rec_min_width: int = 192
