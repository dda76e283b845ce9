"""A JWKS is trusted only when an auth identity of our mesh CA signed it (mesh/jwks_signature.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from mesh import identity_files
from mesh.certificate_authority import CertificateAuthority
from mesh.identity_files import Identity
from mesh.jwks_signature import JwksSignatureError, sign_jwks, unverified_payload, verify_jwks

TD = "example.test"


def identity(tmp: Path, ca: CertificateAuthority, service: str) -> Identity:
    folder = tmp / service
    identity_files.write(folder, ca.issue(service, f"{service}-1"), ca.cert_pem)
    return identity_files.load(folder)


def test_a_jwks_is_trusted_only_when_an_auth_identity_of_our_ca_signed_it(tmp_path: Path) -> None:
    ca, other = CertificateAuthority.create(TD), CertificateAuthority.create(TD)
    document = b'{"keys":[]}'
    signed = sign_jwks(document, identity(tmp_path, ca, "auth"))
    got, signer = verify_jwks(signed, ca.cert_pem, TD)
    assert got == document and signer.service == "auth"
    assert unverified_payload(signed) == document
    refused = {
        "not issued by this mesh's CA": sign_jwks(document, identity(tmp_path / "other", other, "auth")),
        "not by an auth identity": sign_jwks(document, identity(tmp_path, ca, "admin")),
        "not a JWS": document,
    }
    for why, value in refused.items():
        with pytest.raises(JwksSignatureError, match=why):
            verify_jwks(value, ca.cert_pem, TD)
    with pytest.raises(JwksSignatureError, match="not in date"):
        verify_jwks(signed, ca.cert_pem, TD, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    with pytest.raises(JwksSignatureError, match=r"identity of another\.test"):
        verify_jwks(signed, ca.cert_pem, "another.test")
    # The payload swapped under the same header and signature: the signature no longer holds.
    header, _, signature = signed.decode().split(".")
    forged = f"{header}.eyJrZXlzIjpbMV19.{signature}".encode()
    with pytest.raises(JwksSignatureError, match="signature"):
        verify_jwks(forged, ca.cert_pem, TD)
