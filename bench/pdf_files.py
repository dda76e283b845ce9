"""PDFs made on the spot for benchmarks and tests: raw ones written object by object, scans of
images, and the broken or oversized kinds an OCR instance must refuse from the header."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def raw_pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A PDF whose object i+1 is objects[i], with a correct cross-reference table; 1 is the catalog."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer_extra,
        xref,
    )
    return bytes(out)


def text_pdf(lines: list[str], pages: int = 1, media_box: bytes = b"0 0 612 792") -> bytes:
    """`pages` pages sharing one content stream that writes `lines` in Helvetica 24 pt."""
    shown = b"".join(b"1 0 0 1 72 %d Tm (%s) Tj\n" % (700 - 40 * i, t.encode()) for i, t in enumerate(lines))
    content = b"BT /F1 24 Tf\n" + shown + b"ET"
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    objects += [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [%s] /Resources << /Font << /F1 3 0 R >> >> "
        b"/Contents 4 0 R >>" % media_box
    ] * pages
    return raw_pdf(objects)


def big_image_pdf(width: int, height: int) -> bytes:
    """One letter page drawing a `width`x`height` scan (its header says so; the pixel data is a
    stub, since the header check must refuse it before anything is decoded)."""
    content = b"q 612 0 0 792 0 0 cm /Im1 Do Q"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /DCTDecode /Length 4 >>\nstream\n\xff\xd8\xff\xd9\nendstream"
        % (width, height),
    ]
    return raw_pdf(objects)


def encrypted_pdf() -> bytes:
    """A one-page PDF under the standard security handler, whose user password is not empty."""
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /P -4 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        encrypt,
    ]
    return raw_pdf(objects, b"/Encrypt 4 0 R /ID [<" + b"33" * 16 + b"> <" + b"33" * 16 + b">] ")


def scan_pdf(paths: Sequence[Path], resolution: float = 200.0) -> bytes:
    """Images as a scanned PDF, one page each, at `resolution` DPI."""
    images = [Image.open(path).convert("RGB") for path in paths]
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=resolution)
    return out.getvalue()


def refused_pdfs() -> dict[str, tuple[bytes, str]]:
    """PDFs an instance with the default limits (100 pages, 40 Mpx a page) refuses from the header:
    name -> (bytes, the ErrorReason it answers)."""
    whole = text_pdf(["x"])
    return {
        "truncated": (whole[: len(whole) // 2], "IMAGE_TRUNCATED"),
        "encrypted": (encrypted_pdf(), "IMAGE_ENCRYPTED"),
        "malformed": (b"%PDF-1.7\nthis is no PDF body at all\n%%EOF\n", "IMAGE_CORRUPT"),
        "2000 pages": (text_pdf(["x"], pages=2000), "IMAGE_TOO_MANY_PAGES"),
        # 200 x 200 inches: about 207 Mpx even at the lowest DPI (72)
        "200-inch page": (text_pdf(["x"], media_box=b"0 0 14400 14400"), "IMAGE_TOO_MANY_PIXELS"),
        "50 Mpx scan on a page": (big_image_pdf(10_000, 5_000), "IMAGE_TOO_MANY_PIXELS"),
    }
