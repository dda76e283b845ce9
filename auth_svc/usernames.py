"""User names: NFKC + case-folded normal form and the allowed shape (3-32 of a-z 0-9 . _ -)."""

from __future__ import annotations

import re
import unicodedata

MIN_USERNAME_CHARS = 3
MAX_USERNAME_CHARS = 32
_MAX_RAW_CHARS = 256
# ASCII only after normalisation: NFKC already maps full-width and compatibility forms to it,
# and refusing other scripts rules out look-alike names ("аdmin" with a Cyrillic а).
_SHAPE = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?\Z")
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


class UsernameRejected(ValueError):
    """A user name that breaks the rules; `description` is safe to show the user."""

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason


def normalise_username(raw: str) -> str:
    """The stored, compared form of a user name, or UsernameRejected saying what is wrong.

    NFKC, case folding (then NFKC again, as folding can denormalise), surrounding white space
    dropped. What remains must be 3-32 characters of a-z, 0-9, '.', '_' and '-', starting and
    ending with a letter or digit; anything else (quotes, spaces, ';', other scripts) is refused.
    """
    if len(raw) > _MAX_RAW_CHARS:
        raise UsernameRejected(f"must be at most {MAX_USERNAME_CHARS} characters", "USERNAME_TOO_LONG")
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold()).strip()
    if len(name) < MIN_USERNAME_CHARS:
        raise UsernameRejected(f"must be at least {MIN_USERNAME_CHARS} characters", "USERNAME_TOO_SHORT")
    if len(name) > MAX_USERNAME_CHARS:
        raise UsernameRejected(f"must be at most {MAX_USERNAME_CHARS} characters", "USERNAME_TOO_LONG")
    bad = sorted({c for c in name if c not in _ALLOWED})
    if bad:
        shown = " ".join(repr(c) for c in bad[:5])
        raise UsernameRejected(
            f"may only contain letters a-z, digits, '.', '_' and '-' (not {shown})",
            "USERNAME_CHARACTERS",
        )
    if not _SHAPE.match(name):
        raise UsernameRejected("must start and end with a letter or digit", "USERNAME_SHAPE")
    return name
