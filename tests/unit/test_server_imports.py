"""The OCR server process stays light: OpenCV, RapidOCR and ONNX are for its worker processes only."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.corpus import ROOT

HEAVY = ("cv2", "rapidocr", "onnxruntime", "onnx", "shapely")


def heavy_modules_after(module: str) -> set[str]:
    """The HEAVY modules a fresh interpreter has loaded after importing `module`."""
    probe = f"import json, sys, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout))


def test_the_ocr_server_imports_no_model_code() -> None:
    # ocr_svc.server pulls in everything `ocrmesh serve ocr` runs outside its workers (servicer,
    # recognizer, admission, worker pool, engine settings). Model code there cost ~60 MiB per instance.
    assert heavy_modules_after("ocr_svc.server") == set()


def test_the_probe_sees_heavy_imports_where_they_are() -> None:
    assert {"cv2", "rapidocr"} <= heavy_modules_after("ocr_svc.pipeline")
