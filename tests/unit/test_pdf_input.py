"""PDF input: checks from the header (pages, page and embedded-image pixels, encrypted, truncated,
broken), the DPI chosen from the page size, rendering and the text layer, on PDFs made here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ocr_svc.engine import Engine, EngineSettings
from ocr_svc.guardrails import ImageRejected, Limits, Reason, describe, inspect
from ocr_svc.job import Job, JobOptions, JobRejected, JobResult
from ocr_svc.pdf_input import PdfLimits, choose_dpi, inspect_pdf, is_pdf, page_text, render_page
from ocr_svc.worker_process import handle
from tests.pdf_samples import encrypted_pdf, raw_pdf, scan_pdf, text_pdf

LIMITS = PdfLimits()
WITH_PDF = Limits(formats=("JPEG", "PNG", "PDF"), max_pdf_pages=5)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield Engine(EngineSettings(device="cpu", threads=1))


def _rejected(data: bytes, limits: PdfLimits = LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        inspect_pdf(data, limits)
    assert caught.value.field == "image" and caught.value.description
    return caught.value


def test_dpi_follows_the_page_size_within_its_range() -> None:
    assert choose_dpi(595, 842, LIMITS) == pytest.approx(2400 * 72 / 842)  # A4: about 205 DPI
    assert choose_dpi(252, 144, LIMITS) == 300  # a business card: capped
    assert choose_dpi(2384, 3370, LIMITS) == 72  # A0: floored
    a4 = inspect_pdf(text_pdf(["x"], media_box=b"0 0 595 842"), LIMITS).pages[0]
    assert a4.size_px == (1696, 2400)


def test_is_pdf_reads_the_magic() -> None:
    assert is_pdf(text_pdf(["x"])) and is_pdf(b"\r\n" + text_pdf(["x"]))
    assert not is_pdf(b"\x89PNG\r\n\x1a\n") and not is_pdf(b"")


def test_a_scanned_pdf_is_inspected_rendered_and_read_page_by_page(engine: Engine) -> None:
    data = scan_pdf("rapidocr_en_rec.jpg", "rapidocr_text_rec.jpg")
    header = inspect_pdf(data, LIMITS)
    assert [page.number for page in header.pages] == [1, 2]
    assert header.rendered_pixels == sum(page.pixels for page in header.pages)
    read = []
    for page in header.pages:
        array = render_page(data, page)
        assert array.shape == (page.size_px[1], page.size_px[0], 3) and array.flags.c_contiguous
        assert page_text(data, page) == []  # a scan has no text layer
        read.append(engine.run(array, JobOptions()).texts)
    assert read == [
        ["To facilitate the shot type analysis in videos, we collect MovieShots, a large-scale"],
        ["韩国小馆"],
    ]


def test_the_text_layer_is_read_without_ocr() -> None:
    data = text_pdf(["Invoice 2026-117", "Total due: 42.00"], pages=2)
    header = inspect_pdf(data, LIMITS)
    assert len(header.pages) == 2
    assert page_text(data, header.pages[1]) == ["Invoice 2026-117", "Total due: 42.00"]


def test_too_many_pages_are_refused_from_the_page_count() -> None:
    rejected = _rejected(text_pdf(["x"], pages=2000))
    assert rejected.reason == Reason.TOO_MANY_PAGES and "2000 pages" in rejected.description
    assert len(inspect_pdf(text_pdf(["x"], pages=3), PdfLimits(max_pages=3)).pages) == 3


def test_a_page_too_large_to_render_is_refused() -> None:
    # 200 x 200 inches: 207 Mpx even at the 72 DPI floor.
    rejected = _rejected(text_pdf(["x"], media_box=b"0 0 14400 14400"))
    assert rejected.reason == Reason.TOO_MANY_PIXELS and "page 1" in rejected.description


def test_a_huge_embedded_image_is_refused_before_it_is_decoded() -> None:
    # A 10000x6000 (60 Mpx) scan drawn on a small page: PDFium would decode it whole.
    pixels = b"\x00" * 16
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [5 0 R] /Count 1 >>",
        b"<< /Type /XObject /Subtype /Image /Width 10000 /Height 6000 /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length %d >>\nstream\n%s\nendstream" % (len(pixels), pixels),
        b"<< /Length 31 >>\nstream\nq 612 0 0 792 0 0 cm /Im1 Do Q\nendstream",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 3 0 R >> >> "
        b"/Contents 4 0 R >>",
    ]
    rejected = _rejected(raw_pdf(objects))
    assert rejected.reason == Reason.TOO_MANY_PIXELS and "10000x6000" in rejected.description


def test_encrypted_truncated_and_malformed_pdfs_are_refused_clearly() -> None:
    whole = text_pdf(["Secret"])
    assert _rejected(encrypted_pdf()).reason == Reason.ENCRYPTED
    assert _rejected(whole[: len(whole) // 2]).reason == Reason.TRUNCATED
    assert _rejected(b"%PDF-1.7\nthis is no PDF body at all\n%%EOF\n").reason == Reason.CORRUPT
    assert _rejected(b"%PDF-1.4\n%%EOF\n").reason == Reason.CORRUPT


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_pages"):
        PdfLimits(max_pages=0)
    with pytest.raises(ValueError, match="dpi"):
        PdfLimits(min_dpi=300, max_dpi=72)


# Through the service's own entry points: the header check and the worker's job handler.


def test_pdfs_pass_the_header_check_only_where_pdf_is_a_format() -> None:
    data = text_pdf(["x"], pages=3, media_box=b"0 0 595 842")
    header = inspect(data, WITH_PDF)
    assert (header.format, header.frames, header.width, header.height) == ("PDF", 3, 1696, 2400)
    assert describe(header).startswith("PDF 1696x2400 PDF") and "3 pages" in describe(header)
    with pytest.raises(ImageRejected) as caught:
        inspect(data, Limits(formats=("JPEG", "PNG")))  # without PDF: Pillow knows no such image
    assert caught.value.reason == Reason.NOT_AN_IMAGE
    with pytest.raises(ImageRejected) as caught:
        inspect(text_pdf(["x"], pages=6), WITH_PDF)
    assert caught.value.reason == Reason.TOO_MANY_PAGES


def test_the_worker_reads_every_page_in_order(engine: Engine) -> None:
    data = scan_pdf("rapidocr_text_rec.jpg", "rapidocr_en_rec.jpg", "rapidocr_short.png")
    job = Job(1, data, JobOptions(), inspect(data, WITH_PDF))
    answer = handle(engine, WITH_PDF, job)
    assert isinstance(answer, JobResult), answer
    spans = answer.pages
    assert [span.number for span in spans] == [1, 2, 3]
    per_page = [
        [line.text for line in answer.reading.lines[span.first_line : span.first_line + span.line_count]]
        for span in spans
    ]
    assert per_page == [
        ["韩国小馆"],
        ["To facilitate the shot type analysis in videos, we collect MovieShots, a large-scale"],
        ["中国网络空间安全"],
    ]
    assert (answer.width, answer.height) == (spans[0].width, spans[0].height)
    assert not any(span.text_layer for span in spans)


def test_a_page_job_reads_only_its_page(engine: Engine) -> None:
    data = scan_pdf("rapidocr_text_rec.jpg", "rapidocr_short.png")
    header = inspect(data, WITH_PDF)
    answer = handle(engine, WITH_PDF, Job(5, data, JobOptions(), header, page=2))
    assert isinstance(answer, JobResult)
    assert [line.text for line in answer.reading.lines] == ["中国网络空间安全"]
    assert [(span.number, span.first_line, span.line_count) for span in answer.pages] == [(2, 0, 1)]
    missing = handle(engine, WITH_PDF, Job(6, data, JobOptions(), header, page=3))
    assert isinstance(missing, JobRejected) and missing.reason == Reason.CORRUPT


def test_the_text_layer_is_returned_when_asked(engine: Engine) -> None:
    data = text_pdf(["Invoice 2026-117", "Total due: 42.00"], pages=2)
    asked = handle(engine, WITH_PDF, Job(2, data, JobOptions(use_text_layer=True), inspect(data, WITH_PDF)))
    assert isinstance(asked, JobResult)
    assert [line.text for line in asked.reading.lines] == ["Invoice 2026-117", "Total due: 42.00"] * 2
    assert all(span.text_layer for span in asked.pages) and asked.reading.det_ms == 0.0
    ocr = handle(engine, WITH_PDF, Job(3, data, JobOptions(), inspect(data, WITH_PDF)))
    assert isinstance(ocr, JobResult) and not any(span.text_layer for span in ocr.pages)
    assert [line.text for line in ocr.reading.lines][:2] == ["Invoice 2026-117", "Total due: 42.00"]


def test_a_pdf_that_breaks_past_the_header_check_is_rejected_by_the_worker(engine: Engine) -> None:
    good = text_pdf(["x"])
    header = inspect(good, WITH_PDF)
    answer = handle(engine, WITH_PDF, Job(4, good[: len(good) // 2], JobOptions(), header))
    assert isinstance(answer, JobRejected) and answer.reason == Reason.TRUNCATED
