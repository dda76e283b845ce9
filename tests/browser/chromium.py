"""Debian's chromium for Playwright: where it is, the flags it needs here, small PNG screenshots."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

from PIL import Image

CHROMIUM = os.environ.get("OCRMESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Headless on a box without a GPU or a network: no sandbox (root in CI), and none of the
# background fetches that would hammer the closed network.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = (
    f"CHROMIUM NOT FOUND at {CHROMIUM}: the browser tests are SKIPPED. "
    "Install it with `apt-get install -y chromium` (as root `make test` does), "
    "or point OCRMESH_CHROMIUM at one."
)


def available() -> bool:
    return Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)


def save_small_png(png: bytes, path: Path, colors: int = 256) -> int:
    """Write a screenshot as a palette PNG (a UI screenshot loses nothing visible at 256 colours,
    and shrinks 3-5x); returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as img:
        rgb = img.convert("RGB")
        small = rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(path, optimize=True)
    return path.stat().st_size
