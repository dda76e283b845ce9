"""Where one image's OCR time goes: each stage of our pipeline beside plain RapidOCR, alternating reps."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from ocr_svc.detection_size import padding_px
from ocr_svc.engine import Engine, EngineSettings
from ocr_svc.job import JobOptions, Line
from ocr_svc.pipeline import (
    Models,
    as_bgr,
    classify,
    crop_lines,
    detect_sized,
    order_lines,
    pad_image,
    recognise,
    run_pipeline,
)
from ocr_svc.pipeline_settings import PipelineSettings

DEFAULT_IMAGE = "../shared/ocr-corpus/real/rapidocr_ch_en_num.jpg"


class Clock:
    """Wall and CPU milliseconds per named step, over many reps."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def time(self, name: str, call: Callable[[], Any]) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = call()
        self.wall.setdefault(name, []).append((time.perf_counter() - w) * 1000)
        self.cpu.setdefault(name, []).append((time.process_time() - c) * 1000)
        return out

    def medians(self) -> dict[str, tuple[float, float]]:
        return {k: (statistics.median(v), statistics.median(self.cpu[k])) for k, v in self.wall.items()}


def staged_run(ocr: Any, image: Any, settings: PipelineSettings, clock: Clock) -> dict[str, Any]:
    """run_pipeline's steps one by one (same calls, same order), each timed."""
    models = Models.of(ocr)
    bgr = clock.time("bgr+pad", lambda: as_bgr(image))
    height, width = bgr.shape[:2]
    padded = pad_image(bgr, padding_px(height, width, settings.padding))
    boxes, _scores, passes = clock.time(
        "det (all passes)", lambda: detect_sized(models.det, padded, settings)
    )
    for k, p in enumerate(passes):
        clock.wall.setdefault(f"  det pass {k + 1} {p.kind} {p.input_hw[1]}x{p.input_hw[0]}", []).append(p.ms)
        clock.cpu.setdefault(f"  det pass {k + 1} {p.kind} {p.input_hw[1]}x{p.input_hw[0]}", []).append(
            float("nan")
        )
    crops = clock.time("crop", lambda: crop_lines(padded, boxes))
    crops, flipped, _ = clock.time("cls", lambda: classify(models.cls, crops))
    texts, scores, _ = clock.time("rec", lambda: recognise(models.rec, crops, flipped, settings))
    square = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    lines = [Line(t, s, square) for t, s in zip(texts, scores, strict=True)]
    clock.time("order", lambda: order_lines(lines, settings))
    widths = sorted(round(c.shape[1] * 48 / c.shape[0]) for c in crops)
    return {"crops": len(crops), "flipped": len(flipped), "rec_widths_at_48": widths, "passes": len(passes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="image to OCR (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=10, help="alternating reps per engine")
    parser.add_argument("--json", type=Path, help="write the medians here as JSON")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="also time run_pipeline with these PipelineSettings changed (e.g. tight_rec=false), "
        "alternating with the defaults; repeatable",
    )
    parser.add_argument(
        "--unflushed",
        action="store_true",
        help="also time an engine that keeps the models' subnormal weights (flush_subnormals=False), "
        "alternating, and check it reads the same lines",
    )
    ns = parser.parse_args(argv)
    from rapidocr import RapidOCR

    image = cv2.imread(ns.image)
    if image is None:
        parser.error(f"cannot read {ns.image}: give an image path with --image")
    ours = Engine(EngineSettings(device="cpu", threads=1))
    raw1 = RapidOCR(
        params={
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    unflushed = (
        Engine(EngineSettings(device="cpu", threads=1, flush_subnormals=False)) if ns.unflushed else None
    )
    rawd = RapidOCR(params={"Global.log_level": "error"})
    for engine in (raw1, rawd):
        engine(image)
    staged, whole = Clock(), Clock()
    raw_parts: dict[str, dict[str, list[float]]] = {"raw 1 thread": {}, "raw default threads": {}}
    info: dict[str, Any] = {}
    settings = ours.settings.pipeline
    changes: dict[str, Any] = {}
    for item in ns.baseline:
        key, _, value = item.partition("=")
        current = getattr(settings, key)
        changes[key] = (
            value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
        )
    baseline = dataclasses.replace(settings, **changes) if changes else None
    same_lines = []
    same_as_unflushed = []
    for _ in range(ns.reps):
        info = staged_run(ours._ocr, image, settings, staged)
        new = whole.time("ours run_pipeline", lambda: run_pipeline(ours._ocr, image, JobOptions(), settings))
        if baseline is not None:
            old = whole.time(
                "ours baseline " + " ".join(ns.baseline),
                lambda: run_pipeline(ours._ocr, image, JobOptions(), baseline),
            )
            same_lines.append(old.texts == new.texts)
        if unflushed is not None:
            kept = whole.time(
                "ours, subnormal weights kept",
                functools.partial(run_pipeline, unflushed._ocr, image, JobOptions(), settings),
            )
            same_as_unflushed.append(kept.lines == new.lines)
        for name, engine in (("raw 1 thread", raw1), ("raw default threads", rawd)):
            out = whole.time(name, functools.partial(engine, image))
            for k, v in zip(("det", "cls", "rec"), out.elapse_list, strict=False):
                raw_parts[name].setdefault(k, []).append(float(v or 0) * 1000)
    result = {
        "image": ns.image,
        "shape": list(image.shape),
        "reps": ns.reps,
        "ours_stages_ms_wall_cpu": staged.medians(),
        "whole_ms_wall_cpu": whole.medians(),
        "raw_stage_ms": {n: {k: statistics.median(v) for k, v in p.items()} for n, p in raw_parts.items()},
        "ours_info": info,
        "baseline_same_lines_every_rep": all(same_lines) if same_lines else None,
        "subnormal_weights_zeroed": ours.info.subnormal_weights_zeroed,
        "unflushed_same_lines_scores_boxes_every_rep": all(same_as_unflushed) if same_as_unflushed else None,
    }
    if baseline is not None:
        key = "ours baseline " + " ".join(ns.baseline)
        ratio = statistics.median(
            b / a for a, b in zip(whole.cpu["ours run_pipeline"], whole.cpu[key], strict=True)
        )
        result["baseline_cpu_over_new_paired_median"] = ratio
    print(json.dumps(result, indent=1, default=str))
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
