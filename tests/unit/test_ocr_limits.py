"""The image limits OCR instances publish in the registry, combined as a caller must obey them."""

from __future__ import annotations

from mesh.ocr_limits import RECORD_KEY, ImageLimits, accepted_by_all
from mesh.registry import Instance


def ocr(name: str, limits: object) -> Instance:
    return Instance(service="ocr", id=name, address=f"127.0.0.1:{len(name)}", extra={RECORD_KEY: limits})


def test_the_smallest_limits_and_the_shared_formats_win() -> None:
    a = ImageLimits(20 << 20, 40_000_000, ("JPEG", "PNG", "WEBP"))
    b = ImageLimits(8 << 20, 90_000_000, ("PNG", "JPEG"))
    got = accepted_by_all([ocr("a", a.to_record()), ocr("bb", b.to_record())])
    assert got == ImageLimits(8 << 20, 40_000_000, ("JPEG", "PNG"))


def test_records_without_readable_limits_are_left_out() -> None:
    good = ImageLimits(1 << 20, 1_000_000, ("PNG",))
    odd = [{"formats": "PNG"}, {"max_image_bytes": "x", "max_image_pixels": 1, "formats": []}, None, 3]
    instances = [ocr("good", good.to_record()), *(ocr(f"odd{i}", v) for i, v in enumerate(odd))]
    assert accepted_by_all(instances) == good
    assert accepted_by_all([ocr("old", None)]) is None
    assert ImageLimits.from_record(good.to_record()) == good
