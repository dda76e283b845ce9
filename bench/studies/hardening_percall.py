"""In-process cost per Recognize call of the issue-17 checks the OCR server runs on every call."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from ocrmesh.ocr.v1 import ocr_pb2

from auth_svc import keys
from auth_svc.store import UserRecord
from auth_svc.tokens import TokenSettings, issue_access_token
from mesh.handler_wrapping import _tolerant
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from mesh.token_verify import TokenVerifier

REVOKED_SESSIONS = 1000
"""Revoked sessions the verifier holds while timed: far more than a mesh has within 15 minutes."""


def _best_ns_per_call(call: Callable[[], object], calls: int, repeats: int) -> float:
    """The fastest of `repeats` runs of `calls` calls, in ns per call (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def _session_check_ns(calls: int, repeats: int) -> dict[str, float]:
    """A cached token's verify() with the revoked-session check on (1000 revoked) and off."""
    now = time.time()
    key = keys.generate(now, now)
    jwks = keys.jwks_document([key])
    settings = TokenSettings(DEFAULT_ISSUER, DEFAULT_AUDIENCE, 900.0, 3600.0)
    token = issue_access_token(key, UserRecord("bench-user", "bench", "", now), now, settings, "bench-sid")[0]
    timed: dict[str, float] = {}
    for label, on in (("on", True), ("off", False)):
        verifier = TokenVerifier(jwks, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE, check_sessions=on)
        verifier.update_revoked({f"other-{i}": now + 900 for i in range(REVOKED_SESSIONS)})
        verifier.verify(token)  # cached from here on, as a client's token is after its first call
        timed[label] = _best_ns_per_call(functools.partial(verifier.verify, token), calls, repeats)
    return timed


def _tolerant_parse_ns(request: bytes, calls: int, repeats: int) -> dict[str, float]:
    """Parsing the Recognize request through the MALFORMED_MESSAGE wrapper, and bare."""
    bare = ocr_pb2.RecognizeRequest.FromString
    wrapped = _tolerant(bare)
    assert wrapped is not None
    return {
        "on": _best_ns_per_call(lambda: wrapped(request), calls, repeats),
        "off": _best_ns_per_call(lambda: bare(request), calls, repeats),
    }


def measure_per_call(image: bytes, filename: str, calls: int = 20_000, repeats: int = 5) -> dict[str, Any]:
    """ns per call that each always-on check adds (on - off, floored at 0), and their sum."""
    request = ocr_pb2.RecognizeRequest(image=image, filename=filename).SerializeToString()
    pieces = {
        "revoked_session_check": _session_check_ns(calls, repeats),
        "malformed_message_wrapper": _tolerant_parse_ns(request, calls, repeats),
    }
    added = {name: max(0.0, t["on"] - t["off"]) for name, t in pieces.items()}
    return {
        "calls": calls,
        "repeats": repeats,
        "revoked_sessions_held": REVOKED_SESSIONS,
        "timings_ns": pieces,
        "added_ns": added,
        "total_added_ns": sum(added.values()),
    }


def core_share(added_ns: float, ok_per_s: float) -> float:
    """The share of one core that `added_ns` per call takes at `ok_per_s` calls a second."""
    return added_ns * ok_per_s / 1e9
