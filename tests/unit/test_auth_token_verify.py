"""TokenVerifier security: only ES256 from a known kid, right iss/aud, not expired, untampered."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth_svc import keys
from mesh.session_revocations import encode_revocations, parse_revocations
from mesh.token_verify import (
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenRevoked,
    TokenVerifier,
    bearer_token,
    parse_jwks,
)

ISS, AUD = "ocrmesh-auth", "ocrmesh"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    base = {
        "iss": ISS,
        "aud": AUD,
        "sub": "u1",
        "iat": int(NOW),
        "exp": int(NOW) + 900,
        "jti": "j1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: keys.SigningKey, **over: Any) -> str:
    return jwt.encode(claims(**over), key.private_key, algorithm="ES256", headers={"kid": key.kid})


@pytest.fixture
def key() -> keys.SigningKey:
    return keys.generate(NOW, NOW)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(key: keys.SigningKey, clock: Clock) -> TokenVerifier:
    return TokenVerifier(keys.jwks_document([key]), issuer=ISS, audience=AUD, clock=clock)


def test_valid_token_gives_claims(key: keys.SigningKey, verifier: TokenVerifier) -> None:
    got = verifier.verify(sign(key))
    assert got["sub"] == "u1" and got["jti"] == "j1"


def test_jwks_as_json_text(key: keys.SigningKey, clock: Clock) -> None:
    text = json.dumps(keys.jwks_document([key]))
    verifier = TokenVerifier(text, issuer=ISS, audience=AUD, clock=clock)
    assert verifier.verify(sign(key))["sub"] == "u1"


def test_alg_none_is_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        with pytest.raises(TokenInvalid):
            verifier.verify(token)


def test_hs256_with_public_key_as_secret_is_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(key.jwk).encode()):
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
        body = b64(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        with pytest.raises(TokenInvalid, match="HS256"):
            verifier.verify(f"{header}.{body}.{b64(mac)}")


def test_rs256_is_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": key.kid})
    with pytest.raises(TokenInvalid, match="RS256"):
        verifier.verify(token)


def test_unknown_kid_is_rejected(verifier: TokenVerifier) -> None:
    other = keys.generate(NOW, NOW)
    with pytest.raises(TokenInvalid, match="kid"):
        verifier.verify(sign(other))


def test_forged_with_known_kid_is_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), attacker, algorithm="ES256", headers={"kid": key.kid})
    with pytest.raises(TokenInvalid, match="signature"):
        verifier.verify(token)


def test_missing_kid_is_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    token = jwt.encode(claims(), key.private_key, algorithm="ES256")
    with pytest.raises(TokenInvalid, match="kid"):
        verifier.verify(token)


def test_expired_is_rejected_after_leeway(
    verifier: TokenVerifier, key: keys.SigningKey, clock: Clock
) -> None:
    token = sign(key)
    clock.now = NOW + 900 + 20  # within the 30 s leeway
    assert verifier.verify(token)["sub"] == "u1"
    clock.now = NOW + 900 + 31
    with pytest.raises(TokenExpired):
        verifier.verify(token)  # cached from the previous call, and still re-checked


def test_wrong_audience_and_issuer_are_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    with pytest.raises(TokenInvalid, match="audience"):
        verifier.verify(sign(key, aud="someone-else"))
    with pytest.raises(TokenInvalid, match="issuer"):
        verifier.verify(sign(key, iss="https://evil.example"))


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "aud", "iss"])
def test_required_claims(verifier: TokenVerifier, key: keys.SigningKey, claim: str) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(key, **{claim: None}))


def test_tampered_payload_and_signature_are_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    token = sign(key)
    header, body, signature = token.split(".")
    evil = b64(json.dumps(claims(sub="admin")).encode())
    with pytest.raises(TokenInvalid, match="signature"):
        verifier.verify(f"{header}.{evil}.{signature}")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(TokenInvalid):
        verifier.verify(f"{header}.{body}.{flipped}")
    with pytest.raises(TokenInvalid):
        verifier.verify("not-a-jwt")
    with pytest.raises(TokenInvalid):
        verifier.verify("x" * 10_000)


def test_issued_in_the_future_is_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    with pytest.raises(TokenInvalid, match="future"):
        verifier.verify(sign(key, iat=int(NOW) + 3600, exp=int(NOW) + 7200))


def test_rotation_via_update_jwks(key: keys.SigningKey, clock: Clock) -> None:
    new = keys.generate(NOW, NOW)
    verifier = TokenVerifier(keys.jwks_document([key]), issuer=ISS, audience=AUD, clock=clock)
    old_token, new_token = sign(key), sign(new)
    assert verifier.verify(old_token)
    with pytest.raises(TokenInvalid):
        verifier.verify(new_token)
    verifier.update_jwks(keys.jwks_document([key, new]))
    assert verifier.verify(old_token) and verifier.verify(new_token)
    verifier.update_jwks(keys.jwks_document([new]))
    with pytest.raises(TokenInvalid):
        verifier.verify(old_token)  # the cache was dropped with the key
    with pytest.raises(ValueError):
        verifier.update_jwks({"nokeys": []})
    assert verifier.kids == {new.kid}  # a bad document keeps the old keys


def test_jwks_skips_unusable_keys(key: keys.SigningKey) -> None:
    doc = {
        "keys": [
            {"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {**key.jwk, "kid": "off-curve", "y": key.jwk["x"]},
            {k: v for k, v in key.jwk.items() if k != "kid"},
            key.jwk,
        ]
    }
    assert set(parse_jwks(doc)) == {key.kid}


def test_bearer_metadata() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x", "y"), ("authorization", "bearer  abc ")]) == "abc"
    with pytest.raises(TokenMissing, match="missing"):
        bearer_token([])
    with pytest.raises(TokenMissing, match="Bearer"):
        bearer_token([("authorization", "Basic dXNlcjpwdw==")])


def test_verification_rate(key: keys.SigningKey) -> None:
    """Uncached ES256 verification stays well above 1,000/s even on a slow CI core."""
    verifier = TokenVerifier(
        keys.jwks_document([key]), issuer=ISS, audience=AUD, clock=time.time, cache_size=0
    )
    now = int(time.time())
    tokens = [sign(key, iat=now, exp=now + 900, jti=str(i)) for i in range(300)]
    started = time.perf_counter()
    for token in tokens:
        verifier.verify(token)
    rate = len(tokens) / (time.perf_counter() - started)
    assert rate > 1000, f"{rate:.0f} verifications/s"


def raw_token(key: keys.SigningKey, header: dict[str, Any], body: Any) -> str:
    """A token signed correctly over whatever header and body the test wants."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    der = key.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_hand_built_token_is_accepted(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    header = {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    assert verifier.verify(raw_token(key, header, claims()))["sub"] == "u1"
    assert verifier.verify(raw_token(key, header, claims(aud=["other", AUD])))["sub"] == "u1"


def test_structural_tricks_are_rejected(verifier: TokenVerifier, key: keys.SigningKey) -> None:
    header = {"alg": "ES256", "kid": key.kid}
    good = raw_token(key, header, claims())
    h, p, s = good.split(".")
    cases = {
        "padded": f"{h}.{p}.{s}==",
        "extra segment": f"{h}.{p}.{s}.{s}",
        "der signature": f"{h}.{p}.{b64(b'0' * 70)}",
        "bad characters": f"{h}.{p}+/.{s}",
        "crit header": raw_token(key, {**header, "crit": ["b64"], "b64": False}, claims()),
        "id token typ": raw_token(key, {**header, "typ": "JOSE+JSON"}, claims()),
        "list payload": raw_token(key, header, [claims()]),
        "aud list without us": raw_token(key, header, claims(aud=["other"])),
        "numeric sub": raw_token(key, header, claims(sub=42)),
        "string exp": raw_token(key, header, claims(exp="never")),
        "bool exp": raw_token(key, header, claims(exp=True)),
    }
    for name, token in cases.items():
        with pytest.raises(TokenInvalid):
            verifier.verify(token)
            pytest.fail(name)


def test_a_revoked_session_is_refused_even_when_its_token_was_verified_before(
    verifier: TokenVerifier, key: keys.SigningKey
) -> None:
    token, other = sign(key, sid="family-1"), sign(key, sid="family-2")
    assert verifier.verify(token)["sid"] == "family-1"  # now in the cache
    verifier.update_revoked({"family-1": NOW + 900})
    with pytest.raises(TokenRevoked):
        verifier.verify(token)
    assert verifier.verify(other)["sid"] == "family-2"
    verifier.update_revoked({})  # the entry aged out: the token (if not expired) is fine again
    assert verifier.verify(token)["sid"] == "family-1"


def test_revocation_documents_round_trip_and_bad_ones_are_refused() -> None:
    raw = encode_revocations({"b": 200.4, "a": 100.0})
    assert raw == b'{"sessions":{"a":100,"b":200}}'  # byte-stable: instances write the same bytes
    assert parse_revocations(raw) == {"a": 100.0, "b": 200.0}
    for bad in (b"[]", b'{"sessions": []}', b'{"sessions": {"a": "soon"}}', b'{"sessions": {"": 1}}', b"x"):
        with pytest.raises(ValueError):
            parse_revocations(bad)
