"""PDFs made for the tests: raw ones written object by object, scans of corpus images, encrypted
(the makers live in bench/pdf_files.py, which the PDF benchmark uses too)."""

from __future__ import annotations

from bench.pdf_files import big_image_pdf, encrypted_pdf, raw_pdf, refused_pdfs, text_pdf
from bench.pdf_files import scan_pdf as scan_pdf_of
from tests.corpus import CORPUS

__all__ = ["big_image_pdf", "encrypted_pdf", "raw_pdf", "refused_pdfs", "scan_pdf", "text_pdf"]


def scan_pdf(*names: str) -> bytes:
    """Corpus images as a scanned PDF, one page each, at 200 DPI."""
    return scan_pdf_of([CORPUS / "real" / name for name in names])
