"""Whether a host in an address is an IP literal (Envoy wants STATIC clusters and endpoints for those)."""

from __future__ import annotations

import ipaddress


def is_ip(host: str) -> bool:
    """True for "127.0.0.1" or "::1", False for a DNS name such as "ocr.internal"."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
