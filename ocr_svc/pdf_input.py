"""PDF input: check an untrusted PDF before any page is rendered, then render pages at a DPI chosen
from each page's size, or read their embedded text layer (pypdfium2, PDFium).

PDFium is not thread-safe: call this module from one thread per process (a worker process, or the
guarded header check), never from several threads at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from ocr_svc.guardrails import ImageRejected, Limits, Reason

PDF_MAGIC = b"%PDF-"
PDF_EOF = b"%%EOF"
POINTS_PER_INCH = 72.0


@dataclass(frozen=True)
class PdfLimits:
    """What a PDF may hold. `max_page_pixels` bounds both a rendered page and the images embedded
    in it (PDFium decodes an embedded image whole, whatever size it is drawn at)."""

    max_pages: int = 100
    max_page_pixels: int = 40_000_000
    # Pages render with their long side near this many pixels, between min_dpi and max_dpi.
    target_long_side_px: int = 2400
    min_dpi: float = 72.0
    max_dpi: float = 300.0

    def __post_init__(self) -> None:
        if self.max_pages < 1:
            raise ValueError(f"PdfLimits.max_pages must be at least 1, got {self.max_pages}")
        if self.max_page_pixels < 1:
            raise ValueError(f"PdfLimits.max_page_pixels must be at least 1, got {self.max_page_pixels}")
        if not 0 < self.min_dpi <= self.max_dpi:
            raise ValueError(f"PdfLimits needs 0 < min_dpi <= max_dpi, got {self.min_dpi}, {self.max_dpi}")


def limits_for(limits: Limits, max_side: int | None = None) -> PdfLimits:
    """The PDF limits an instance's image limits imply: its page cap, its pixel limit per page, and
    pages rendered no larger than the engine's `max_side`."""
    target = (
        PdfLimits.target_long_side_px if max_side is None else min(max_side, PdfLimits.target_long_side_px)
    )
    return PdfLimits(
        max_pages=limits.max_pdf_pages, max_page_pixels=limits.max_pixels, target_long_side_px=target
    )


@dataclass(frozen=True)
class PdfPage:
    """One page as it will be rendered: its size in points, the DPI chosen and the pixels that gives."""

    number: int  # 1-based
    width_pt: float
    height_pt: float
    dpi: float

    @property
    def size_px(self) -> tuple[int, int]:
        scale = self.dpi / POINTS_PER_INCH  # rounded up, as pypdfium2 sizes the bitmap
        return max(1, math.ceil(self.width_pt * scale)), max(1, math.ceil(self.height_pt * scale))

    @property
    def pixels(self) -> int:
        width, height = self.size_px
        return width * height


@dataclass(frozen=True)
class PdfHeader:
    """What checking a PDF found: its pages, in order."""

    pages: tuple[PdfPage, ...]
    bytes: int

    @property
    def rendered_pixels(self) -> int:
        return sum(page.pixels for page in self.pages)


def is_pdf(data: bytes) -> bool:
    """Whether the bytes claim to be a PDF (the magic may follow up to 1 KiB of junk, as readers allow)."""
    return PDF_MAGIC in data[:1024]


def choose_dpi(width_pt: float, height_pt: float, limits: PdfLimits) -> float:
    """The DPI that puts a page's long side near `target_long_side_px`, within the limits' range:
    an A4 page renders at about 205 DPI (1696x2400 px), a business card at 300, a poster at 72."""
    long_side = max(width_pt, height_pt, 1.0)
    wanted = limits.target_long_side_px * POINTS_PER_INCH / long_side
    return min(limits.max_dpi, max(limits.min_dpi, wanted))


def inspect_pdf(data: bytes, limits: PdfLimits, only_page: int = 0) -> PdfHeader:
    """Open a PDF and check it without rendering anything; raises `ImageRejected`.

    Refuses encrypted PDFs (ENCRYPTED), broken or truncated ones (CORRUPT, TRUNCATED), more than
    `max_pages` pages (TOO_MANY_PAGES, from the page count alone) and a page whose rendering or
    embedded images would exceed `max_page_pixels` (TOO_MANY_PIXELS). With `only_page` (1-based),
    only that page is looked at and returned (a worker reading one page of a checked PDF).
    """
    if PDF_EOF not in data[-1024:]:
        # PDFium rebuilds a cut-off file's cross-reference table and shows what is left; say so.
        raise ImageRejected(
            Reason.TRUNCATED, "the PDF data ends early (no end-of-file marker): send the complete file"
        )
    document = _open(data)
    try:
        count = len(document)
        if count == 0:
            raise ImageRejected(Reason.CORRUPT, "the PDF has no pages: send a PDF with at least one page")
        if count > limits.max_pages:
            raise ImageRejected(
                Reason.TOO_MANY_PAGES,
                f"the PDF has {count} pages; the limit is {limits.max_pages}: split it and send the parts",
            )
        if only_page and not 1 <= only_page <= count:
            raise ImageRejected(Reason.CORRUPT, f"the PDF has no page {only_page}")
        pages = []
        for index in [only_page - 1] if only_page else range(count):
            width_pt, height_pt = document.get_page_size(index)
            if not (math.isfinite(width_pt) and math.isfinite(height_pt)) or min(width_pt, height_pt) <= 0:
                raise ImageRejected(Reason.CORRUPT, f"page {index + 1} of the PDF has no valid size")
            page = PdfPage(index + 1, width_pt, height_pt, choose_dpi(width_pt, height_pt, limits))
            if page.pixels > limits.max_page_pixels:
                width, height = page.size_px
                raise ImageRejected(
                    Reason.TOO_MANY_PIXELS,
                    f"page {page.number} of the PDF is {width_pt:.0f}x{height_pt:.0f} pt, "
                    f"{width}x{height} px at {page.dpi:.0f} DPI; the limit is "
                    f"{limits.max_page_pixels / 1e6:.0f} Mpx per page",
                )
            _check_embedded_images(document, index, limits)
            pages.append(page)
        return PdfHeader(pages=tuple(pages), bytes=len(data))
    finally:
        document.close()


def render_page(data: bytes, page: PdfPage) -> npt.NDArray[np.uint8]:
    """One page rendered on white at its chosen DPI, as an H×W×3 uint8 BGR array."""
    document = _open(data)
    try:
        pdf_page = document[page.number - 1]
        try:
            bitmap = pdf_page.render(scale=page.dpi / POINTS_PER_INCH, fill_color=(255, 255, 255, 255))
            array = np.array(bitmap.to_numpy(), dtype=np.uint8)  # BGR(x) as PDFium draws it
        finally:
            pdf_page.close()
    finally:
        document.close()
    return np.ascontiguousarray(array[:, :, :3])


def page_text(data: bytes, page: PdfPage) -> list[str]:
    """The page's embedded text layer as lines (empty for a scan without one)."""
    document = _open(data)
    try:
        pdf_page = document[page.number - 1]
        try:
            text_page = pdf_page.get_textpage()
            try:
                text = text_page.get_text_bounded()
            finally:
                text_page.close()
        finally:
            pdf_page.close()
    finally:
        document.close()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _open(data: bytes) -> pdfium.PdfDocument:
    """`PdfDocument` over the bytes, every failure mapped to `ImageRejected`."""
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise ImageRejected(
                Reason.ENCRYPTED,
                "the PDF is encrypted (it needs a password or uses an unsupported security handler): "
                "send it without encryption",
            ) from None
        raise ImageRejected(
            Reason.CORRUPT, f"the PDF cannot be read ({exc}): re-save it and send it again"
        ) from None


def _check_embedded_images(document: pdfium.PdfDocument, index: int, limits: PdfLimits) -> None:
    """Refuse a page drawing an image larger than `max_page_pixels` (decoded whole when rendered)."""
    page = document[index]
    try:
        for item in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2):
            if not isinstance(item, pdfium.PdfImage):
                continue
            width, height = item.get_px_size()
            if width * height > limits.max_page_pixels:
                raise ImageRejected(
                    Reason.TOO_MANY_PIXELS,
                    f"page {index + 1} of the PDF holds a {width}x{height} image; the limit is "
                    f"{limits.max_page_pixels / 1e6:.0f} Mpx: scan at a lower resolution",
                )
    finally:
        page.close()
