"""Synthetic calibration pages for quantisation: text rendered with this machine's fonts, no corpus image.

Static int8 quantisation needs inputs that look like what the models see in service, and they must
not come from the corpora the result is judged on (`shared/ocr-corpus`, `tests/accuracy`). These
pages are made here with PIL: lines of English words, digits and punctuation, and of Chinese
characters taken from the recogniser's own dictionary, in every font found (CJK fonts only for CJK
lines), at several sizes, dark-on-light and light-on-dark, on flat, gradient, noisy and textured
backgrounds, some slightly rotated, some blurred. A fixed seed makes the same pages every time.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")

WORDS = (
    "the quick brown fox jumps over lazy dog invoice total amount due date order number customer "
    "address street city phone email account balance payment received thank you for your business "
    "chapter section figure table page report summary results method data model network service "
    "request response error status version release notes update install configure server client "
    "monday tuesday january february price quantity item description tax subtotal discount"
).split()
SYMBOLS = ("No.", "#", "$", "%", "(", ")", ":", "-", "/", ",", ".", "&", "+", "@")


@dataclass(frozen=True)
class Font:
    """One font file found on this machine; `cjk` when it draws Chinese characters."""

    path: Path
    cjk: bool


def _fc_list(selector: str) -> list[Path]:
    try:
        out = subprocess.run(
            ["fc-list", selector, "file"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({Path(line.split(":", 1)[0].strip()) for line in out.splitlines() if line.strip()})


def find_fonts() -> list[Font]:
    """Fonts on this machine (fc-list, else the usual folders), CJK ones marked, in a stable order."""
    paths = _fc_list(":") or sorted(
        p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in FONT_SUFFIXES
    )
    cjk = set(_fc_list(":lang=zh"))
    usable = [p for p in paths if p.suffix.lower() in FONT_SUFFIXES and "math" not in p.name.lower()]
    return [Font(p, p in cjk or _draws_cjk(p)) for p in usable]


def _draws_cjk(path: Path) -> bool:
    """Whether the font has a glyph for 中 (fc-list may not know the languages of a loose file)."""
    from PIL import ImageFont

    try:
        font = ImageFont.truetype(str(path), 32)
    except OSError:
        return False
    box = font.getbbox("中")
    blank = font.getbbox("\u0378")  # an unassigned code point draws as .notdef, if at all
    return box != blank and box[2] - box[0] > 8


def cjk_characters(dictionary: Sequence[str]) -> list[str]:
    """The CJK ideographs of a recogniser's character list."""
    return [c for c in dictionary if len(c) == 1 and "\u4e00" <= c <= "\u9fff"]


def _latin_line(rng: random.Random) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(2, 7)):
        roll = rng.random()
        if roll < 0.65:
            word = rng.choice(WORDS)
            parts.append(word.capitalize() if rng.random() < 0.3 else word.upper() if roll < 0.05 else word)
        elif roll < 0.85:
            parts.append(str(rng.randint(0, 99999)) if rng.random() < 0.5 else f"{rng.uniform(0, 999):.2f}")
        else:
            parts.append(rng.choice(SYMBOLS) + rng.choice(WORDS))
    return " ".join(parts)


def _cjk_line(rng: random.Random, chars: Sequence[str]) -> str:
    text = "".join(rng.choice(chars) for _ in range(rng.randint(4, 16)))
    if rng.random() < 0.4:  # mixed lines, as on Chinese documents
        cut = rng.randint(1, len(text) - 1)
        text = text[:cut] + rng.choice(("2026年", "123", "ABC", "：", "，", "。", "（1）")) + text[cut:]
    return text


def _background(rng: random.Random, height: int, width: int, dark: bool) -> npt.NDArray[np.uint8]:
    base = rng.randint(10, 70) if dark else rng.randint(185, 255)
    tint = np.array([rng.randint(-20, 20) for _ in range(3)], dtype=np.int16)
    kind = rng.choice(("flat", "gradient", "noise", "texture"))
    img = np.full((height, width, 3), base, dtype=np.int16) + tint
    if kind == "gradient":
        ramp = np.linspace(0, rng.randint(20, 60) * (1 if dark else -1), width, dtype=np.float32)
        img = img + ramp[None, :, None].astype(np.int16)
    elif kind == "noise":
        img = img + np.asarray(
            np.random.default_rng(rng.randint(0, 2**31)).normal(0, 12, img.shape), dtype=np.int16
        )
    elif kind == "texture":
        yy, xx = np.mgrid[0:height, 0:width]
        wave = 15 * np.sin(xx / rng.uniform(8, 40)) * np.cos(yy / rng.uniform(8, 40))
        img = img + wave[..., None].astype(np.int16)
    return np.asarray(np.clip(img, 0, 255), dtype=np.uint8)


def render_page(
    rng: random.Random, fonts: Sequence[Font], chars: Sequence[str], size: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """One RGB page of `size` (width, height) with lines of text in random fonts, sizes and colours."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    width, height = size
    dark = rng.random() < 0.25
    page = Image.fromarray(_background(rng, height, width, dark))
    draw = ImageDraw.Draw(page)
    cjk_fonts = [f for f in fonts if f.cjk]
    y = rng.randint(4, 30)
    while y < height - 12:
        cjk = bool(chars and cjk_fonts) and rng.random() < 0.5
        font = ImageFont.truetype(str(rng.choice(cjk_fonts if cjk else fonts).path), rng.randint(12, 56))
        text = _cjk_line(rng, chars) if cjk else _latin_line(rng)
        ink = rng.randint(200, 255) if dark else rng.randint(0, 90)
        colour = tuple(int(np.clip(ink + rng.randint(-40, 40), 0, 255)) for _ in range(3))
        x = rng.randint(4, max(5, width // 6))
        draw.text((x, y), text, font=font, fill=colour)
        box: Any = draw.textbbox((x, y), text, font=font)
        y = int(box[3]) + rng.randint(4, 40)
    if rng.random() < 0.3:
        page = page.rotate(rng.uniform(-4, 4), expand=False, fillcolor=page.getpixel((0, 0)))
    if rng.random() < 0.3:
        page = page.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    return np.asarray(page, dtype=np.uint8)


PAGE_SIZES = ((320, 96), (640, 200), (800, 600), (1024, 768), (600, 900), (1280, 400), (480, 480))


def calibration_pages(
    count: int, chars: Sequence[str], fonts: Sequence[Font] | None = None, seed: int = 20261207
) -> list[npt.NDArray[np.uint8]]:
    """`count` BGR pages (what the engine takes) of synthetic text, the same for the same seed."""
    fonts = list(fonts) if fonts is not None else find_fonts()
    if not fonts:
        raise RuntimeError("no fonts found (fc-list, /usr/share/fonts): install e.g. fonts-dejavu-core")
    rng = random.Random(seed)
    pages = []
    for k in range(count):
        rgb = render_page(rng, fonts, chars, PAGE_SIZES[k % len(PAGE_SIZES)])
        pages.append(np.ascontiguousarray(rgb[:, :, ::-1]))
    return pages
