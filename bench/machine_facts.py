"""What a benchmark report says about the machine it ran on: the CPU model beside the architecture."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """e.g. "AMD EPYC, x86_64": ratios measured here hold for this CPU, so reports name it."""
    return f"{cpu_model()}, {platform.machine()}"
