"""Flattening transparency by content: the background choice (pure) and the real engine reading
light-on-transparent, dark-on-transparent, mixed-ink and watermarked images made here with Pillow."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ocr_svc.engine import Engine, EngineSettings
from ocr_svc.guardrails import Limits, decode
from ocr_svc.job import JobOptions
from ocr_svc.transparency import BLACK, GREY, WHITE, background_for
from tests.corpus import CORPUS

LIMITS = Limits()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _text_on_clear(
    text: str, ink: tuple[int, int, int, int], under: tuple[int, int, int], size: int = 40
) -> Image.Image:
    """`text` in `ink` on a fully transparent canvas whose hidden RGB is `under`."""
    font = ImageFont.load_default(size=size)
    image = Image.new("RGBA", (size * len(text) * 3 // 5 + 2 * size, size * 3), (*under, 0))
    ImageDraw.Draw(image).text((size, size), text, font=font, fill=ink)
    return image


def _rgba(*pixels: tuple[int, int, int, int]) -> np.ndarray:
    return np.array([list(pixels)], dtype=np.uint8)


# The choice, on arrays.


def test_dark_ink_goes_onto_white_light_ink_onto_black_mixed_onto_grey() -> None:
    clear_black, clear_white = (0, 0, 0, 0), (255, 255, 255, 0)
    assert background_for(_rgba(clear_black, clear_black, (10, 10, 10, 255))) == WHITE
    assert background_for(_rgba(clear_black, clear_black, (255, 255, 255, 255))) == BLACK
    assert background_for(_rgba(clear_white, clear_white, (255, 255, 255, 255))) == BLACK
    assert background_for(_rgba(clear_white, (250, 250, 250, 255), (5, 5, 5, 255))) == GREY
    # Light yellow is light; pure blue is dark.
    assert background_for(_rgba(clear_black, (255, 230, 80, 255))) == BLACK
    assert background_for(_rgba(clear_white, (0, 0, 255, 255))) == WHITE


def test_hidden_colours_of_clear_pixels_never_sway_the_choice() -> None:
    ink = (20, 20, 20, 255)
    for hidden in ((0, 0, 0, 0), (255, 255, 255, 0), (255, 255, 0, 0)):
        assert background_for(_rgba(hidden, hidden, hidden, hidden, ink)) == WHITE


def test_pixels_weigh_what_shows_of_them() -> None:
    # Counted, half the ink is light (grey); weighed, 0.4 of 2.4 pixels show light: white.
    faint_light, dark = (255, 255, 255, 51), (0, 0, 0, 255)
    assert background_for(_rgba(faint_light, faint_light, dark, dark, (0, 0, 0, 0))) == WHITE


def test_a_nearly_opaque_image_keeps_white() -> None:
    light = np.full((20, 20, 4), 250, dtype=np.uint8)
    light[..., 3] = 255
    light[0, :5, 3] = 0  # a rounded corner: 5 of 400 pixels clear
    assert background_for(light) == WHITE
    assert background_for(np.zeros((0, 0, 4), dtype=np.uint8)) == WHITE
    assert background_for(np.zeros((3, 3, 4), dtype=np.uint8)) == WHITE  # nothing shows
    with pytest.raises(ValueError, match="RGBA"):
        background_for(np.zeros((3, 3, 3), dtype=np.uint8))


def test_decode_flattens_light_text_onto_black_and_large_images_decide_from_a_sample() -> None:
    image = Image.new("RGBA", (3000, 2000), (255, 255, 255, 0))
    image.paste((255, 255, 255, 255), (100, 100, 2900, 1900))
    array = decode(_png(image), LIMITS).array
    assert array[0, 0].tolist() == [0, 0, 0] and array[1000, 1500].tolist() == [255, 255, 255]


def test_palette_and_la_images_with_light_ink_are_flattened_onto_black() -> None:
    la = Image.new("LA", (40, 20), (255, 0))
    la.paste((240, 255), (10, 5, 30, 15))
    array = decode(_png(la), LIMITS).array
    assert array[0, 0].tolist() == [0, 0, 0] and array[10, 20].tolist() == [240, 240, 240]
    palette = Image.new("P", (40, 20), 0)
    palette.putpalette([255, 255, 255, 250, 250, 250] + [0] * 762)
    palette.paste(1, (10, 5, 30, 15))
    out = io.BytesIO()
    palette.save(out, "PNG", transparency=0)
    array = decode(out.getvalue(), LIMITS).array
    assert array[0, 0].tolist() == [0, 0, 0] and array[10, 20].tolist() == [250, 250, 250]


# The real engine, in-process, on images made here (a few seconds).


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield Engine(EngineSettings(device="cpu", threads=1))


def _read(engine: Engine, image: Image.Image) -> list[str]:
    return engine.run(decode(_png(image), LIMITS).array, JobOptions()).texts


@pytest.mark.parametrize("under", [(0, 0, 0), (255, 255, 255)], ids=["black-under", "white-under"])
def test_white_text_on_transparent_reads(engine: Engine, under: tuple[int, int, int]) -> None:
    # Composited onto white (what this service did before) this came back with no lines at all.
    image = _text_on_clear("Light logo text 42", (255, 255, 255, 255), under)
    assert _read(engine, image) == ["Light logo text 42"]


@pytest.mark.parametrize("under", [(0, 0, 0), (255, 255, 255)], ids=["black-under", "white-under"])
def test_dark_text_on_transparent_reads(engine: Engine, under: tuple[int, int, int]) -> None:
    image = _text_on_clear("Dark logo text 42", (20, 20, 20, 255), under)
    assert _read(engine, image) == ["Dark logo text 42"]


def test_light_chinese_and_english_on_transparent_reads(engine: Engine) -> None:
    # The shared corpus's dark-on-transparent image, turned light: its alpha carries the glyphs,
    # every pixel's RGB is white.
    dark = Image.open(CORPUS / "bad" / "transparent_text.png").convert("RGBA")
    light = Image.new("RGBA", dark.size, (255, 255, 255, 255))
    light.putalpha(dark.getchannel("A"))
    assert _read(engine, light) == ["透明背景文字", "Transparent background"]


def test_faint_light_watermark_alone_on_transparent_reads(engine: Engine) -> None:
    image = _text_on_clear("CONFIDENTIAL 2026", (255, 255, 255, 110), (255, 255, 255), size=48)
    assert _read(engine, image) == ["CONFIDENTIAL 2026"]


def test_dark_and_light_ink_on_one_transparent_canvas_both_read(engine: Engine) -> None:
    font = ImageFont.load_default(size=30)
    image = Image.new("RGBA", (500, 140), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.text((20, 20), "Dark brand name", font=font, fill=(10, 10, 10, 255))
    draw.text((20, 80), "light tagline here", font=font, fill=(250, 250, 250, 255))
    assert _read(engine, image) == ["Dark brand name", "light tagline here"]


@pytest.mark.parametrize("layer_alpha", [255, 230, 160])
def test_semi_transparent_watermark_over_a_photo_reads_as_before(engine: Engine, layer_alpha: int) -> None:
    """A photo-like backdrop, a caption, a faint white watermark blended in, rounded clear corners
    and (230, 160) the whole layer see-through: both texts read, as they did on white."""
    rng = np.random.default_rng(7)
    height, width = 240, 640
    y, x = np.mgrid[0:height, 0:width]
    backdrop = np.stack([90 + 100 * x / width, 120 + 60 * y / height, 160 - 80 * x / width], axis=-1)
    backdrop += rng.normal(0, 18, (height, width, 3))
    photo = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8)).convert("RGBA")
    marks = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(marks)
    draw.text((60, 40), "SAMPLE COPY", font=ImageFont.load_default(size=64), fill=(255, 255, 255, 120))
    draw.text((60, 160), "Harbour view 1999", font=ImageFont.load_default(size=40), fill=(15, 15, 30, 255))
    image = Image.alpha_composite(photo, marks)
    alpha = Image.new("L", (width, height), 0)
    ImageDraw.Draw(alpha).rounded_rectangle((0, 0, width - 1, height - 1), radius=60, fill=layer_alpha)
    image.putalpha(alpha)
    on_white = Image.new("RGB", image.size, WHITE)
    on_white.paste(image, mask=image.getchannel("A"))
    expected = ["SAMPLE COPY", "Harbour view 1999"]
    assert _read(engine, on_white) == expected  # the old flattening, as the yardstick
    assert _read(engine, image) == expected
