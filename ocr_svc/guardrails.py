"""Input guardrails: cheap header checks on untrusted image bytes, then safe decoding to BGR."""

from __future__ import annotations

import io
import logging
import math
import re
import struct
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError

from ocr_svc.transparency import flatten

log = logging.getLogger(__name__)


class Reason(StrEnum):
    """Stable machine codes carried by `ImageRejected.reason`."""

    EMPTY = "EMPTY"  # zero bytes
    TOO_MANY_BYTES = "TOO_MANY_BYTES"  # longer than Limits.max_bytes
    NOT_AN_IMAGE = "NOT_AN_IMAGE"  # no image format recognises the bytes
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"  # an image, but not in Limits.formats
    TOO_MANY_PIXELS = "TOO_MANY_PIXELS"  # header dimensions over Limits.max_pixels (bombs)
    TRUNCATED = "TRUNCATED"  # the data ends before the image does
    CORRUPT = "CORRUPT"  # recognised, but the header or pixel data cannot be decoded
    TOO_SMALL = "TOO_SMALL"  # a side shorter than Limits.min_side
    ENCRYPTED = "ENCRYPTED"  # a PDF that needs a password (ocr_svc/pdf_input.py)
    TOO_MANY_PAGES = "TOO_MANY_PAGES"  # a PDF with more pages than PdfLimits.max_pages


@dataclass(frozen=True)
class Limits:
    """What the service accepts. Pixel counts come from the header, before any pixel is decoded.

    Pillow's own bomb check still runs inside `Image.open`: images over about 179 Mpx are always
    rejected (TOO_MANY_PIXELS), whatever `max_pixels` says, and so are images over about 89 Mpx when
    warnings are turned into errors. Keep `max_pixels` below that.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PDF")
    min_side: int = 1
    max_pdf_pages: int = 100  # when "PDF" is among the formats (ocr_svc/pdf_input.py)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"Limits.max_bytes must be at least 1, got {self.max_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"Limits.max_pixels must be at least 1, got {self.max_pixels}")
        if self.min_side < 1:
            raise ValueError(f"Limits.min_side must be at least 1, got {self.min_side}")
        if self.max_pdf_pages < 1:
            raise ValueError(f"Limits.max_pdf_pages must be at least 1, got {self.max_pdf_pages}")
        if not self.formats:
            raise ValueError("Limits.formats must name at least one format, e.g. ('PNG',)")
        # Accept any iterable of names in any case; store Pillow's upper-case names as a tuple.
        object.__setattr__(self, "formats", tuple(name.upper() for name in self.formats))


class ImageRejected(Exception):
    """An upload the service will not process.

    `reason` is a stable code from `Reason`, `field` the request field at fault and `description`
    a sentence for the caller saying what is wrong and what to do about it. Picklable, so worker
    processes can send it back.
    """

    def __init__(self, reason: str, description: str, field: str = "image") -> None:
        super().__init__(reason, description, field)
        self.reason: str = str(reason)
        self.description = description
        self.field = field

    def __str__(self) -> str:
        return f"{self.reason}: {self.description}"


@dataclass(frozen=True)
class ImageHeader:
    """What the header says; width and height are as stored, before EXIF orientation."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int
    frames: int
    bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) as displayed, after EXIF orientation (5-8 swap the sides)."""
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded image as the engine takes it.

    `array` is H×W×3 uint8 in BGR order. `width` and `height` are after EXIF orientation and
    before scaling; `scale` is the factor `max_side` applied (1.0 when none), so boxes found in
    `array` map back to the upload by dividing by it.
    """

    array: npt.NDArray[np.uint8]
    width: int
    height: int
    scale: float
    format: str


def inspect(data: bytes, limits: Limits) -> ImageHeader:
    """Check untrusted bytes from their header alone; raises `ImageRejected`.

    Reads only the header (no pixel data is decoded or allocated), so it costs microseconds to a
    few milliseconds, and runs before anything else touches the bytes.
    """
    if not data:
        raise ImageRejected(Reason.EMPTY, "the upload is empty (0 bytes): send the image file itself")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            Reason.TOO_MANY_BYTES,
            f"image is {_size(len(data))} ({len(data)} bytes); the limit is "
            f"{_size(limits.max_bytes)}: compress it or scale it down before sending",
        )
    if "PDF" in limits.formats and data.startswith(b"%PDF-"):
        return _inspect_pdf(data, limits)
    with _open(data, limits) as image:
        image_format = _canonical_format(image.format)
        if image_format not in limits.formats:
            raise ImageRejected(
                Reason.UNSUPPORTED_FORMAT,
                f"{image_format} images are not accepted: convert it to one of {', '.join(limits.formats)}",
            )
        width, height = _stored_size(image)
        if width * height > limits.max_pixels:
            raise ImageRejected(
                Reason.TOO_MANY_PIXELS,
                f"image is {width}x{height} = {_mpx(width * height)}; the limit is "
                f"{_mpx(limits.max_pixels)}: scale it down before sending",
            )
        if min(width, height) < limits.min_side:
            raise ImageRejected(
                Reason.TOO_SMALL,
                f"image is {width}x{height}; both sides must be at least {limits.min_side} px: "
                "send a larger image",
            )
        try:
            frames = int(getattr(image, "n_frames", 1))
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise _unreadable(exc) from exc
        return ImageHeader(
            format=image_format,
            width=width,
            height=height,
            mode=image.mode,
            orientation=_orientation(image, header_only=True),
            frames=frames,
            bytes=len(data),
        )


def decode(
    data: bytes, limits: Limits, max_side: int | None = None, header: ImageHeader | None = None
) -> DecodedImage:
    """Check with `inspect` (unless `header` is what `inspect` said of these bytes already), then
    decode the first frame to BGR; raises `ImageRejected`.

    Applies EXIF orientation, flattens transparency (`transparency.flatten`) and maps every mode (1-bit,
    grayscale, 16-bit, palette, CMYK, alpha) to 8-bit BGR. When `max_side` is given and the long
    side exceeds it, the image is scaled down to that long side (JPEGs decode straight at a
    reduced size where they can).
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if header is None:
        header = inspect(data, limits)  # never decode what the header check has not passed
    long_side = max(header.width, header.height)
    scale = 1.0 if max_side is None or long_side <= max_side else max_side / long_side
    with _open(data, limits) as image:
        if scale < 1.0:
            # JPEG only (a no-op elsewhere): let libjpeg decode at 1/2, 1/4 or 1/8 size, never
            # below the target, so the final resize below stays a downscale.
            image.draft(image.mode, (math.ceil(header.width * scale), math.ceil(header.height * scale)))
        try:
            image.load()
            # The TIFF reader turns the image itself while loading and drops the tag, so the
            # header's value counts; a PNG may carry its EXIF only after the pixel data.
            orientation = header.orientation
            if orientation == 1:
                orientation = _orientation(image, header_only=False)
            rgb = _to_rgb(_apply_orientation(image))
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise _unreadable(exc) from exc
    if scale == 1.0:
        width, height = rgb.size
    elif orientation in (5, 6, 7, 8):
        width, height = header.height, header.width
    else:
        width, height = header.width, header.height
    if scale < 1.0:
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return DecodedImage(array=_bgr_array(rgb), width=width, height=height, scale=scale, format=header.format)


def _inspect_pdf(data: bytes, limits: Limits) -> ImageHeader:
    """A PDF's header: `frames` is its page count, the size its largest rendered page's."""
    from ocr_svc import pdf_input  # it builds on this module's ImageRejected

    pdf = pdf_input.inspect_pdf(data, pdf_input.limits_for(limits))
    width, height = max((page.size_px for page in pdf.pages), key=lambda size: size[0] * size[1])
    return ImageHeader(
        format="PDF",
        width=width,
        height=height,
        mode="PDF",
        orientation=1,
        frames=len(pdf.pages),
        bytes=len(data),
    )


def describe(header: ImageHeader) -> str:
    """One line for logs, e.g. 'JPEG 4000x3000 RGB, 1.9 MiB'."""
    parts = [f"{header.format} {header.width}x{header.height} {header.mode}", _size(header.bytes)]
    if header.orientation != 1:
        shown_w, shown_h = header.oriented_size
        parts.append(f"EXIF orientation {header.orientation} (shown as {shown_w}x{shown_h})")
    if header.format == "PDF":
        parts.append(f"{header.frames} page{'s' if header.frames != 1 else ''}")
    elif header.frames > 1:
        parts.append(f"{header.frames} frames (the first is used)")
    return ", ".join(parts)


def _open(data: bytes, limits: Limits) -> ImageFile.ImageFile:
    """`Image.open` (header only) with every failure mapped to `ImageRejected`."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected(
            Reason.NOT_AN_IMAGE,
            f"the data is not an image in any format we recognise: send a {', '.join(limits.formats)} file",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check fired inside Image.open (the warning only when warnings are errors).
        raise ImageRejected(
            Reason.TOO_MANY_PIXELS,
            f"image is {_bomb_size(exc)} according to its header; the limit is "
            f"{_mpx(limits.max_pixels)}: scale it down before sending",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise _unreadable(exc) from exc


def _unreadable(exc: BaseException) -> ImageRejected:
    if "truncated" in str(exc).lower():
        return ImageRejected(
            Reason.TRUNCATED,
            "the image data ends early (the file is truncated): send the complete file",
        )
    return ImageRejected(
        Reason.CORRUPT,
        f"the image data cannot be decoded ({str(exc)[:120]}): re-save the image and send it again",
    )


def _bomb_size(exc: BaseException) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    return _mpx(int(match[1])) if match else "too many pixels"


def _canonical_format(name: str | None) -> str:
    # Pillow reports JPEGs carrying multi-picture data (many phone photos) as MPO.
    if name == "MPO":
        return "JPEG"
    return name or "UNKNOWN"


def _stored_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as stored, before EXIF orientation."""
    # Pillow's TIFF reader reports the size after orientation (it rotates while loading).
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        width, height = image.tag_v2.get(256), image.tag_v2.get(257)
        if isinstance(width, int) and isinstance(height, int):
            return width, height
    return image.size


def _orientation(image: Image.Image, *, header_only: bool) -> int:
    """EXIF orientation 1-8; 1 when absent or unreadable (broken EXIF never rejects an image)."""
    try:
        # With header_only, the base-class method reads only what the header parse found:
        # PngImageFile.getexif would decode the whole image to look for eXIf after the pixels.
        exif = Image.Image.getexif(image) if header_only else image.getexif()
        value = exif.get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, KeyError, TypeError) as exc:
        log.debug("unreadable EXIF ignored: %s", exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(image: Image.Image) -> Image.Image:
    """A loaded image turned per its EXIF orientation, or as stored when the EXIF is broken."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, KeyError, TypeError) as exc:
        log.warning("EXIF orientation not applied, unreadable EXIF: %s", exc)
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is flattened onto the background its ink reads
    best against (`transparency.background_for`: white under dark ink, black under light ink)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_gray_to_uint8(np.asarray(image))).convert("RGB")
    if image.has_transparency_data:
        # Transparent pixels often hold black (or white); dropping alpha would hide the text.
        return flatten(image)
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _gray_to_uint8(values: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """High-bit-depth grayscale to 0-255: 16-bit by its top byte, others by their value range."""
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        top_byte: npt.NDArray[np.uint16] = np.right_shift(values.astype(np.uint16), 8)
        return top_byte.astype(np.uint8)
    floats: npt.NDArray[np.float32] = values.astype(np.float32)
    top = float(floats.max()) if floats.size else 0.0
    if values.dtype.kind == "f" and top <= 1.0:
        floats *= 255.0  # a float image normalised to 0-1
    elif top > 65535.0:
        floats *= 255.0 / top
    elif top > 255.0:
        floats /= 257.0  # 16-bit data held in a 32-bit mode
    clipped: npt.NDArray[np.float32] = np.clip(floats + 0.5, 0.0, 255.0)
    return clipped.astype(np.uint8)


def _bgr_array(image: Image.Image) -> npt.NDArray[np.uint8]:
    """An RGB image as a writable, contiguous H×W×3 uint8 array in BGR order."""
    width, height = image.size
    raw = image.tobytes("raw", "BGR")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()


def _size(count: int) -> str:
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"
