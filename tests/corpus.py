"""Where the shared OCR corpus lives: ../shared/ocr-corpus beside the repository root."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "ocr-corpus"

if not CORPUS.is_dir():
    raise RuntimeError(
        f"the shared OCR corpus is missing at {CORPUS}: clone the repository beside shared/ "
        "(e.g. git clone . ../fresh keeps ../shared next to it)"
    )
