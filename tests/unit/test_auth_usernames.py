"""User names: NFKC + case folding, allowed characters, lengths, injection-looking input."""

from __future__ import annotations

import pytest

from auth_svc.usernames import UsernameRejected, normalise_username


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Alice", "alice"),
        ("  bob.smith_2-x ", "bob.smith_2-x"),
        ("ＡＤＭＩＮ", "admin"),  # full-width forms fold to ASCII
        ("Straße", "strasse"),
        ("ﬁle", "file"),  # ligature
        ("abc", "abc"),
        ("a" * 32, "a" * 32),
    ],
)
def test_normal_form(raw: str, stored: str) -> None:
    assert normalise_username(raw) == stored


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("ab", "USERNAME_TOO_SHORT"),
        ("a" * 33, "USERNAME_TOO_LONG"),
        ("a" * 10_000, "USERNAME_TOO_LONG"),
        ("admin'--", "USERNAME_CHARACTERS"),
        ("x'; DROP TABLE users;--", "USERNAME_CHARACTERS"),
        ('robert"); --', "USERNAME_CHARACTERS"),
        ("al ice", "USERNAME_CHARACTERS"),
        ("аdmin", "USERNAME_CHARACTERS"),  # Cyrillic а: a look-alike of admin
        ("用户名", "USERNAME_CHARACTERS"),
        ("-alice", "USERNAME_SHAPE"),
        ("alice.", "USERNAME_SHAPE"),
        ("", "USERNAME_TOO_SHORT"),
    ],
)
def test_rejected(raw: str, reason: str) -> None:
    with pytest.raises(UsernameRejected) as rejected:
        normalise_username(raw)
    assert rejected.value.reason == reason
    assert rejected.value.description
