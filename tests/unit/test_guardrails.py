"""Input guardrails on the shared corpus and on images made on the fly: rejects, bombs, decoding."""

from __future__ import annotations

import io
import json
import pickle
import statistics
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ocr_svc.guardrails import (
    DecodedImage,
    ImageHeader,
    ImageRejected,
    Limits,
    Reason,
    decode,
    describe,
    inspect,
)
from tests.corpus import CORPUS

REPO_ROOT = Path(__file__).resolve().parents[2]
BAD = CORPUS / "bad"
REAL = CORPUS / "real"
LARGE = CORPUS / "large" / "large_4000x3000.jpg"
LIMITS = Limits()
MIB = 1024 * 1024

# What each file in bad/ must give. tiny_1x1.png decodes: the default min_side is 1, so a 1x1
# upload is a valid image with no text (stricter limits make it TOO_SMALL, tested below).
BAD_OUTCOMES: dict[str, str] = {
    "empty.png": "inspect:EMPTY",
    "random_bytes.png": "inspect:NOT_AN_IMAGE",
    "truncated.jpg": "decode:TRUNCATED",
    "tiny_1x1.png": "ok",
    "bomb_header_30000x30000.png": "inspect:TOO_MANY_PIXELS",
    "bomb_valid_30000x30000_1bit.png": "inspect:TOO_MANY_PIXELS",
    "grayscale_text.png": "ok",
    "transparent_text.png": "ok",
}


def _read(path: Path) -> bytes:
    assert path.is_file(), f"corpus file missing: {path}"
    return path.read_bytes()


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _rejected(data: bytes, limits: Limits = LIMITS, *, full: bool = False) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        if full:
            decode(data, limits)
        else:
            inspect(data, limits)
    return caught.value


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height 8-bit RGB, then a few bytes of IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(3 * width + 1) * 4)[:32]
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)


def _two_colour(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue, so any rotation or flip shows."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- the bad/ corpus -----------------------------------------------------------------------------


def test_every_bad_file_has_an_expected_outcome_and_matches_its_manifest() -> None:
    manifest = [json.loads(line) for line in _read(BAD / "manifest.jsonl").splitlines() if line]
    on_disk = {p.name for p in BAD.iterdir() if p.suffix not in (".md", ".jsonl")}
    assert on_disk == set(BAD_OUTCOMES), "a file in bad/ has no expected outcome here"
    assert {Path(e["file"]).name for e in manifest} == on_disk
    for entry in manifest:
        assert len(_read(CORPUS / entry["file"])) == entry["bytes"], entry["file"]


@pytest.mark.parametrize("name", sorted(BAD_OUTCOMES))
def test_bad_file_outcome(name: str) -> None:
    data = _read(BAD / name)
    expected = BAD_OUTCOMES[name]
    if expected.startswith("inspect:"):
        assert _rejected(data).reason == expected.removeprefix("inspect:")
        assert _rejected(data, full=True).reason == expected.removeprefix("inspect:")
    elif expected.startswith("decode:"):
        header = inspect(data, LIMITS)  # the header is fine; the pixel data ends early
        assert (header.format, header.width, header.height) == ("JPEG", 500, 628)
        assert _rejected(data, full=True).reason == expected.removeprefix("decode:")
    else:
        decoded = decode(data, LIMITS)
        assert decoded.array.shape == (decoded.height, decoded.width, 3)


def test_rejections_carry_field_and_an_actionable_description() -> None:
    empty = _rejected(b"")
    assert (empty.reason, empty.field) == ("EMPTY", "image")
    assert "empty" in empty.description
    bomb = _rejected(_read(BAD / "bomb_valid_30000x30000_1bit.png"))
    assert "900.0 Mpx" in bomb.description and "40.0 Mpx" in bomb.description
    assert "scale it down" in bomb.description
    garbage = _rejected(_read(BAD / "random_bytes.png"))
    assert "PNG" in garbage.description  # names what to send instead


def test_tiny_1x1_decodes_to_one_white_pixel_or_is_too_small_under_a_min_side() -> None:
    data = _read(BAD / "tiny_1x1.png")
    decoded = decode(data, LIMITS)
    assert decoded.array.shape == (1, 1, 3)
    assert decoded.array.tolist() == [[[255, 255, 255]]]
    rejected = _rejected(data, Limits(min_side=2))
    assert rejected.reason == "TOO_SMALL"
    assert "1x1" in rejected.description


def test_grayscale_png_decodes_to_three_equal_channels() -> None:
    decoded = decode(_read(BAD / "grayscale_text.png"), LIMITS)
    assert decoded.array.shape == (260, 900, 3)
    assert decoded.array.dtype == np.uint8
    blue, green, red = (decoded.array[..., i] for i in range(3))
    assert np.array_equal(blue, green) and np.array_equal(green, red)
    assert decoded.array.min() < 64 and decoded.array.max() > 192  # text and background both there


def test_transparent_png_is_composited_onto_white_with_dark_text() -> None:
    data = _read(BAD / "transparent_text.png")
    alpha = np.asarray(Image.open(io.BytesIO(data)).getchannel("A"))
    decoded = decode(data, LIMITS).array
    assert decoded.shape == (260, 900, 3)
    corners = np.stack([decoded[0, 0], decoded[0, -1], decoded[-1, 0], decoded[-1, -1]])
    assert corners.mean() > 250
    assert decoded[alpha == 0].mean() > 250  # every fully transparent pixel became white
    assert decoded[alpha > 200].mean() < 100  # the opaque text stayed dark


# --- bombs: rejected from the header, never decoded ---------------------------------------------

_MEASURE_CHILD = r"""
import io, json, resource, sys
from pathlib import Path

import psutil
from PIL import Image

from ocr_svc.guardrails import ImageRejected, Limits, decode, inspect

def status_mib(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)

def start():
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    return status_mib("VmRSS")

path, call = sys.argv[1], sys.argv[2]
limits = Limits()
data = Path(path).read_bytes()
# Warm up the plugins and code paths on tiny inputs so only the call under test is measured.
small = io.BytesIO()
Image.new("RGB", (8, 8)).save(small, "PNG")
decode(small.getvalue(), limits)
try:
    inspect(bytes(range(256)) * 8, limits)
except ImageRejected:
    pass
# Cap the address space: a decode that slipped past the guardrails fails here, not the machine.
cap = psutil.Process().memory_info().vms + 256 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
before = start()
try:
    (inspect if call == "inspect" else decode)(data, limits)
    reason = None
except ImageRejected as exc:
    reason = exc.reason
grew = status_mib("VmHWM") - before
# Control: the meter sees a 36 MB pixel buffer allocated in C, where tracemalloc cannot look.
before = start()
control = Image.new("L", (6000, 6000), 1)
control_grew = status_mib("VmHWM") - before
print(json.dumps({"reason": reason, "grew_mib": grew, "control_mib": control_grew}))
"""


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("bomb_header_30000x30000.png", "inspect"),
        ("bomb_valid_30000x30000_1bit.png", "inspect"),
        ("bomb_valid_30000x30000_1bit.png", "decode"),
    ],
)
def test_bomb_is_rejected_with_under_20_mb_peak_rss(name: str, call: str) -> None:
    """Peak RSS of a fresh process, so C allocations count too, with a control that it would."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE_CHILD, str(BAD / name), call],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["reason"] == "TOO_MANY_PIXELS"
    assert result["grew_mib"] < 20
    assert result["control_mib"] > 30, "the RSS meter did not see a 36 MB buffer"


@pytest.mark.parametrize("name", ["bomb_header_30000x30000.png", "bomb_valid_30000x30000_1bit.png"])
def test_bomb_inspect_allocates_under_20_mb_in_python(name: str) -> None:
    data = _read(BAD / name)
    tracemalloc.start()
    try:
        reason = _rejected(data).reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == "TOO_MANY_PIXELS"
    assert peak < 20 * MIB


def test_inspect_of_a_12_mpx_jpeg_reads_no_pixels() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE_CHILD, str(LARGE), "inspect"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["reason"] is None
    assert result["grew_mib"] < 20  # decoding would need 36 MB for the RGB pixels alone
    data = _read(LARGE)
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        inspect(data, LIMITS)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.010  # a full decode takes about 70 ms


def test_pixel_limit_is_checked_from_the_header_at_the_boundary() -> None:
    data = _read(BAD / "grayscale_text.png")  # 900x260
    assert inspect(data, Limits(max_pixels=900 * 260)).width == 900
    rejected = _rejected(data, Limits(max_pixels=900 * 260 - 1))
    assert rejected.reason == "TOO_MANY_PIXELS"
    assert "900x260" in rejected.description


def test_pillow_bomb_warning_band_is_our_too_many_pixels_whatever_the_warning_filter() -> None:
    data = _png_header_only(10_000, 10_000)  # 100 Mpx: over Pillow's warning level, under its error
    with pytest.warns(Image.DecompressionBombWarning):
        rejected = _rejected(data)
    assert rejected.reason == "TOO_MANY_PIXELS"
    assert "10000x10000 = 100.0 Mpx" in rejected.description
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert _rejected(data).reason == "TOO_MANY_PIXELS"


def test_header_only_png_within_limits_is_truncated_on_decode() -> None:
    data = _png_header_only(2000, 2000)
    assert inspect(data, LIMITS).pixels == 4_000_000
    assert _rejected(data, full=True).reason == "TRUNCATED"


# --- byte limit, formats, damaged data -----------------------------------------------------------


def test_byte_limit_is_checked_first_and_inclusive() -> None:
    data = _read(BAD / "grayscale_text.png")
    assert inspect(data, Limits(max_bytes=len(data))).bytes == len(data)
    rejected = _rejected(data, Limits(max_bytes=len(data) - 1))
    assert rejected.reason == "TOO_MANY_BYTES"
    assert str(len(data)) in rejected.description
    # Even garbage is rejected for its size before anything tries to parse it.
    assert _rejected(bytes(2048), Limits(max_bytes=1024)).reason == "TOO_MANY_BYTES"


def test_format_not_in_limits_is_unsupported() -> None:
    data = _read(REAL / "rapidocr_en.jpg")
    rejected = _rejected(data, Limits(formats=("PNG",)))
    assert rejected.reason == "UNSUPPORTED_FORMAT"
    assert "JPEG" in rejected.description and "PNG" in rejected.description
    assert inspect(data, Limits(formats=("png", "jpeg"))).format == "JPEG"  # names in any case


@pytest.mark.parametrize("fmt", ["GIF", "ICO"])
def test_gif_and_ico_are_unsupported_by_default(fmt: str) -> None:
    data = _encode(_two_colour((32, 32)), fmt)
    assert _rejected(data).reason == "UNSUPPORTED_FORMAT"
    assert _rejected(data, full=True).reason == "UNSUPPORTED_FORMAT"
    assert decode(data, Limits(formats=(fmt,))).array.shape == (32, 32, 3)


def test_truncated_png_is_truncated_and_damaged_png_is_corrupt() -> None:
    data = _read(BAD / "grayscale_text.png")
    assert _rejected(data[: len(data) // 2], full=True).reason == "TRUNCATED"
    damaged = bytearray(data)
    for i in range(200, len(damaged) - 100, 37):
        damaged[i] ^= 0x55
    rejected = _rejected(bytes(damaged), full=True)
    assert rejected.reason == "CORRUPT"
    assert "send it again" in rejected.description


def test_jpeg_cut_inside_its_header_is_truncated() -> None:
    assert _rejected(_read(REAL / "rapidocr_en.jpg")[:200]).reason == "TRUNCATED"


# --- decoding ------------------------------------------------------------------------------------


def test_output_is_bgr_contiguous_writable_uint8() -> None:
    decoded = decode(_encode(Image.new("RGB", (5, 3), (255, 10, 0)), "PNG"), LIMITS)
    assert isinstance(decoded, DecodedImage)
    assert decoded.array.shape == (3, 5, 3)
    assert decoded.array[0, 0].tolist() == [0, 10, 255]
    assert decoded.array.flags.c_contiguous and decoded.array.flags.writeable
    assert (decoded.width, decoded.height, decoded.scale, decoded.format) == (5, 3, 1.0, "PNG")


def test_exif_orientation_of_the_corpus_photo_is_applied() -> None:
    data = _read(REAL / "rapidocr_img_exif_orientation.jpg")
    header = inspect(data, LIMITS)
    assert (header.width, header.height, header.orientation) == (752, 306, 3)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1]
    decoded = decode(data, LIMITS)
    # Orientation 3 is a 180° turn: the sides keep their lengths, the pixels do not.
    assert decoded.array.shape == (306, 752, 3) == stored.shape
    assert (decoded.width, decoded.height) == (752, 306)
    assert np.array_equal(decoded.array, stored[::-1, ::-1])
    assert not np.array_equal(decoded.array, stored)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_6_swaps_the_sides_and_turns_clockwise(fmt: str) -> None:
    data = _encode(_two_colour((40, 20)), fmt, exif=_exif(6))
    header = inspect(data, LIMITS)
    assert (header.width, header.height, header.orientation) == (40, 20, 6)
    assert header.oriented_size == (20, 40)
    decoded = decode(data, LIMITS)
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.array.shape == (40, 20, 3)
    top, bottom = decoded.array[:15].mean(axis=(0, 1)), decoded.array[-15:].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60  # the stored left (red) half is now on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_sixteen_bit_grayscale_keeps_its_tones() -> None:
    image = Image.new("I;16", (8, 4))
    image.putdata([0x8000 if x < 4 else 0xFFFF for _ in range(4) for x in range(8)])
    for fmt in ("PNG", "TIFF"):
        array = decode(_encode(image, fmt), LIMITS).array
        assert array.shape == (4, 8, 3)
        assert array[0, 0].tolist() == [128, 128, 128]  # clipping would give 255
        assert array[0, 7].tolist() == [255, 255, 255]


def test_one_bit_tiff_from_the_corpus_decodes_to_black_and_white() -> None:
    data = _read(REAL / "tesseract_phototest.tif")
    assert inspect(data, LIMITS).mode == "1"
    array = decode(data, LIMITS).array
    assert array.shape == (480, 640, 3)
    assert set(np.unique(array).tolist()) == {0, 255}


def test_palette_with_transparency_becomes_white() -> None:
    image = Image.new("P", (20, 10), 0)
    image.putpalette([0, 0, 0, 30, 30, 30] + [0] * 762)
    image.paste(1, (5, 2, 15, 8))
    array = decode(_encode(image, "PNG", transparency=0), LIMITS).array
    assert array[0, 0].tolist() == [255, 255, 255]
    assert array[5, 10].tolist() == [30, 30, 30]


def test_la_and_rgb_colour_key_transparency_become_white() -> None:
    la = Image.new("LA", (20, 10), (0, 0))
    la.paste((0, 255), (5, 2, 15, 8))
    array = decode(_encode(la, "PNG"), LIMITS).array
    assert array[0, 0].tolist() == [255, 255, 255] and array[5, 10].tolist() == [0, 0, 0]
    rgb = Image.new("RGB", (20, 10), (0, 0, 0))
    rgb.paste((200, 0, 0), (5, 2, 15, 8))
    array = decode(_encode(rgb, "PNG", transparency=(0, 0, 0)), LIMITS).array
    assert array[0, 0].tolist() == [255, 255, 255] and array[5, 10].tolist() == [0, 0, 200]


def test_cmyk_jpeg_decodes_to_bgr() -> None:
    data = _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert inspect(data, LIMITS).mode == "CMYK"
    blue, green, red = decode(data, LIMITS).array[8, 8].tolist()
    assert red > 240 and blue < 15 and green < 15


def test_multi_frame_tiff_uses_the_first_frame() -> None:
    first, second = Image.new("L", (12, 12), 0), Image.new("L", (12, 12), 255)
    data = _encode(first, "TIFF", save_all=True, append_images=[second])
    assert inspect(data, LIMITS).frames == 2
    assert decode(data, LIMITS).array.max() == 0


@pytest.mark.parametrize(
    "path", sorted(p for p in REAL.iterdir() if p.suffix != ".jsonl"), ids=lambda p: p.name
)
def test_every_real_corpus_image_decodes(path: Path) -> None:
    data = _read(path)
    header = inspect(data, LIMITS)
    decoded = decode(data, LIMITS)
    assert (decoded.width, decoded.height) == header.oriented_size
    assert decoded.array.shape == (decoded.height, decoded.width, 3)
    assert decoded.array.dtype == np.uint8
    assert decoded.array.std() > 1  # not a blank frame


# --- downscaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_side", "scale", "shape"),
    [
        (2000, 0.5, (1500, 2000, 3)),
        (1000, 0.25, (750, 1000, 3)),
        (1333, 1333 / 4000, (1000, 1333, 3)),
        (4000, 1.0, (3000, 4000, 3)),
        (None, 1.0, (3000, 4000, 3)),
    ],
)
def test_max_side_downscales_the_large_jpeg(
    max_side: int | None, scale: float, shape: tuple[int, int, int]
) -> None:
    decoded = decode(_read(LARGE), LIMITS, max_side=max_side)
    assert decoded.scale == pytest.approx(scale)
    assert decoded.array.shape == shape
    assert (decoded.width, decoded.height) == (4000, 3000)  # before scaling


def test_downscaled_large_jpeg_looks_like_a_plain_resize() -> None:
    data = _read(LARGE)
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize((1000, 750), Image.Resampling.BOX)
    expected = np.asarray(reference)[..., ::-1].astype(np.int16)
    decoded = decode(data, LIMITS, max_side=1000).array.astype(np.int16)
    assert np.abs(decoded - expected).mean() < 4  # also catches a channel swap or a flip


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_max_side_applies_to_the_oriented_image(fmt: str) -> None:
    data = _encode(_two_colour((400, 200)), fmt, exif=_exif(6))
    decoded = decode(data, LIMITS, max_side=100)
    assert decoded.scale == 0.25
    assert (decoded.width, decoded.height) == (200, 400)
    assert decoded.array.shape == (100, 50, 3)
    top, bottom = decoded.array[:40].mean(axis=(0, 1)), decoded.array[-40:].mean(axis=(0, 1))
    assert top[2] > 200 and bottom[0] > 200  # turned clockwise, red on top, blue below


def test_max_side_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_side"):
        decode(_read(BAD / "tiny_1x1.png"), LIMITS, max_side=0)


# --- value types ---------------------------------------------------------------------------------


def test_image_rejected_survives_pickling_between_processes() -> None:
    original = ImageRejected(Reason.TOO_SMALL, "too small: send a larger image")
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.reason, copy.field, copy.description) == ("TOO_SMALL", "image", original.description)
    assert type(copy.reason) is str
    assert str(copy) == "TOO_SMALL: too small: send a larger image"


def test_limits_validate_and_normalise() -> None:
    assert Limits(formats=["png"]).formats == ("PNG",)  # type: ignore[arg-type]
    for bad in ({"max_bytes": 0}, {"max_pixels": 0}, {"min_side": 0}, {"formats": ()}):
        with pytest.raises(ValueError, match="Limits"):
            Limits(**bad)


def test_describe_names_format_size_and_orientation() -> None:
    header = ImageHeader("JPEG", 40, 20, "RGB", 6, 1, 3 * MIB)
    assert describe(header) == "JPEG 40x20 RGB, 3.0 MiB, EXIF orientation 6 (shown as 20x40)"
    assert "2 frames" in describe(ImageHeader("TIFF", 12, 12, "L", 1, 2, 300))
