"""The sessions ended before their access tokens expire: the etcd document auth writes, verifiers read.

One key, `/ocrmesh/v1/revoked-sessions`, holds `{"sessions": {"<sid>": <until>, ...}}`: each
session (refresh-token family, the `sid` claim of its access tokens) revoked by a logout or by
refresh-token reuse, with the time after which none of its access tokens can be valid anyway (the
entry is dropped then). Auth instances rebuild it from their database every second and at once on
a revocation; every token verifier polls it with the JWKS, so a revoked session's access tokens
are refused everywhere within about a second (poll interval plus one call).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

REVOKED_SESSIONS_KEY = "/ocrmesh/v1/revoked-sessions"
_MAX_SID_CHARS = 64


def encode_revocations(sessions: Mapping[str, float]) -> bytes:
    """The document for `sessions` (sid -> until, seconds since the epoch), byte-stable for equal input."""
    body = {"sessions": {sid: round(until) for sid, until in sorted(sessions.items())}}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_revocations(raw: bytes) -> dict[str, float]:
    """sid -> until from a document; ValueError when it is not one (the caller keeps what it had)."""
    doc = json.loads(raw)
    sessions = doc.get("sessions") if isinstance(doc, dict) else None
    if not isinstance(sessions, dict):
        raise ValueError('expected {"sessions": {sid: until}}')
    parsed: dict[str, float] = {}
    for sid, until in sessions.items():
        if not isinstance(sid, str) or not sid or len(sid) > _MAX_SID_CHARS:
            raise ValueError(f"bad session id {sid!r}")
        if not isinstance(until, int | float) or isinstance(until, bool):
            raise ValueError(f"bad expiry for session {sid}")
        parsed[sid] = float(until)
    return parsed
