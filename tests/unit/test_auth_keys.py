"""Signing-key schedule (pure): who signs, what is published, when to rotate; storage form."""

from __future__ import annotations

import json

import pytest

from auth_svc import keys


def test_kid_is_the_rfc7638_thumbprint() -> None:
    key = keys.generate(0.0, 0.0)
    assert key.kid == key.jwk["kid"] and len(key.kid) == 43
    assert key.jwk["alg"] == "ES256" and key.jwk["crv"] == "P-256" and "d" not in key.jwk


def test_schedule() -> None:
    a = keys.generate(0.0, 0.0)
    b = keys.generate(100.0, 160.0)  # published at 100, signs from 160
    both = [b, a]
    assert keys.signer(both, 150.0) is a
    assert [k.kid for k in keys.published(both, 150.0, 60.0)] == [a.kid, b.kid]
    assert keys.signer(both, 160.0) is b
    assert {k.kid for k in keys.published(both, 219.0, 60.0)} == {a.kid, b.kid}
    assert [k.kid for k in keys.published(both, 220.0, 60.0)] == [b.kid]
    assert keys.signer([], 0.0) is None


def test_rotation_due() -> None:
    a = keys.generate(0.0, 0.0)
    assert keys.rotation_due([], 0.0, 100.0)
    assert not keys.rotation_due([a], 99.0, 100.0)
    assert keys.rotation_due([a], 100.0, 100.0)
    assert not keys.rotation_due([a], 1e9, 0.0)


@pytest.mark.parametrize("passphrase", [None, b"s3cret passphrase"])
def test_storage_round_trip(passphrase: bytes | None) -> None:
    key = keys.generate(1.0, 2.0)
    record = keys.to_record(key, passphrase)
    assert record.encrypted == bool(passphrase)
    assert ("ENCRYPTED" in record.private_pem) == bool(passphrase)
    back = keys.from_record(record, passphrase)
    assert back.kid == key.kid and back.jwk == key.jwk and back.activates_at == 2.0
    if passphrase:
        with pytest.raises(keys.KeyLoadError, match="passphrase"):
            keys.from_record(record, None)
        with pytest.raises(keys.KeyLoadError):
            keys.from_record(record, b"wrong")


async def test_publish_jwks_uses_the_put_coroutine() -> None:
    written: dict[str, str] = {}

    async def put(key: str, value: str) -> None:
        written[key] = value

    key = keys.generate(0.0, 0.0)
    await keys.publish_jwks(keys.jwks_document([key]), put)
    assert json.loads(written["/ocrmesh/v1/jwks"])["keys"][0]["kid"] == key.kid
