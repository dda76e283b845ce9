"""The image limits an OCR instance publishes in its registry record, and what every instance takes.

OCR instances put {"limits": {"max_image_bytes", "max_image_pixels", "formats"}} into their
registry value (and refresh it when live settings change them); callers that check uploads
before sending them (the BFF) read the limits from there instead of keeping their own copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.registry import Instance

RECORD_KEY = "limits"


@dataclass(frozen=True)
class ImageLimits:
    """What an OCR instance accepts: bytes per image, pixels per image, formats (Pillow's names)."""

    max_image_bytes: int
    max_image_pixels: int
    formats: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        return {
            "max_image_bytes": self.max_image_bytes,
            "max_image_pixels": self.max_image_pixels,
            "formats": list(self.formats),
        }

    @classmethod
    def from_record(cls, value: Any) -> ImageLimits | None:
        """The limits in a registry value's "limits" field; None when absent or malformed."""
        if not isinstance(value, Mapping):
            return None
        try:
            formats = value["formats"]
            if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
                return None
            return cls(int(value["max_image_bytes"]), int(value["max_image_pixels"]), tuple(formats))
        except (KeyError, TypeError, ValueError):
            return None


def accepted_by_all(instances: Iterable[Instance]) -> ImageLimits | None:
    """What every instance that publishes limits takes (smallest limits, shared formats in the
    first instance's order); None when none publishes any."""
    found = [
        limits
        for inst in instances
        if (limits := ImageLimits.from_record(inst.extra.get(RECORD_KEY))) is not None
    ]
    if not found:
        return None
    shared = [f for f in found[0].formats if all(f in other.formats for other in found[1:])]
    return ImageLimits(
        min(limits.max_image_bytes for limits in found),
        min(limits.max_image_pixels for limits in found),
        tuple(shared),
    )
