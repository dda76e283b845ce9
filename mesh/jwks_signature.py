"""A JWKS signed by an auth identity: a compact JWS (ES256) whose `x5c` header carries the signing
auth instance's mesh certificate, so verifiers trust the key set for who signed it, not for where
it was found (anyone holding an etcd credential that may write the JWKS key could put one there).

A verifier accepts the document only when the certificate in `x5c` was issued by its own mesh CA,
is in date, names an instance of the `auth` service in its trust domain, and its key made the
signature. pyjwt does the JWS, `cryptography` the certificate checks.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt import api_jws

from mesh.identity_files import Identity, IdentityFilesError, spiffe_id_of
from mesh.spiffe_id import SpiffeId

SIGNER_SERVICE = "auth"
"""The only mesh service whose signature makes a JWKS trusted."""
JWS_TYPE = "ocrmesh-jwks+jws"
ALGORITHM = "ES256"


class JwksSignatureError(ValueError):
    """A value that is not a JWKS signed by an auth identity of this mesh; the message says why."""


def sign_jwks(document: bytes, identity: Identity) -> bytes:
    """`document` (the JWKS JSON) as a compact JWS signed with `identity`'s mesh key, its
    certificate in `x5c`."""
    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise JwksSignatureError("a mesh identity's key must be ECDSA P-256 to sign ES256")
    leaf = x509.load_pem_x509_certificate(identity.cert_pem)
    x5c = base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()
    token = api_jws.encode(document, key, algorithm=ALGORITHM, headers={"typ": JWS_TYPE, "x5c": [x5c]})
    return token.encode()


def is_signed(raw: bytes) -> bool:
    """Whether `raw` looks like a compact JWS (a JWKS in plain JSON starts with "{")."""
    return raw.lstrip()[:1] not in (b"{", b"")


def unverified_payload(raw: bytes) -> bytes:
    """The document inside a JWS without checking who signed it: only for processes running
    without a mesh identity, which trust etcd as they do a plain JSON JWKS."""
    try:
        return bytes(api_jws.decode(raw.decode("ascii"), options={"verify_signature": False}))
    except (UnicodeDecodeError, jwt.PyJWTError) as exc:
        raise JwksSignatureError(f"not a JWS: {exc}") from exc


def verify_jwks(
    raw: bytes, ca_pem: bytes, trust_domain: str, now: dt.datetime | None = None
) -> tuple[bytes, SpiffeId]:
    """(the JWKS document, who signed it) of a JWS made by `sign_jwks`, checked against the mesh
    CA certificate(s) in `ca_pem`; JwksSignatureError naming what failed."""
    try:
        token = raw.decode("ascii").strip()
        header = api_jws.get_unverified_header(token)
    except (UnicodeDecodeError, jwt.PyJWTError) as exc:
        raise JwksSignatureError(f"not a JWS: {exc}") from exc
    if header.get("alg") != ALGORITHM:
        raise JwksSignatureError(f"alg {header.get('alg')!r} is not {ALGORITHM}")
    leaf = _leaf_of(header.get("x5c"))
    signer = _check_leaf(leaf, ca_pem, trust_domain, now or dt.datetime.now(dt.UTC))
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise JwksSignatureError(f"{signer.uri}'s certificate holds no ECDSA key")
    try:
        document = api_jws.decode(token, key=public_key, algorithms=[ALGORITHM])
    except jwt.PyJWTError as exc:
        raise JwksSignatureError(f"the signature is not {signer.uri}'s: {exc}") from exc
    return bytes(document), signer


def _leaf_of(x5c: object) -> x509.Certificate:
    if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
        raise JwksSignatureError("no x5c certificate in the JWS header")
    try:
        return x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except (ValueError, binascii.Error) as exc:
        raise JwksSignatureError(f"the x5c certificate is unreadable: {exc}") from exc


def _check_leaf(leaf: x509.Certificate, ca_pem: bytes, trust_domain: str, now: dt.datetime) -> SpiffeId:
    try:
        roots = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise JwksSignatureError(f"the mesh CA certificate is unreadable: {exc}") from exc
    if not any(_issued_by(leaf, root) for root in roots):
        raise JwksSignatureError("the x5c certificate was not issued by this mesh's CA")
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise JwksSignatureError(
            f"the x5c certificate is not in date (valid {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
        )
    try:
        signer = spiffe_id_of(leaf)
    except IdentityFilesError as exc:
        raise JwksSignatureError(f"the x5c certificate names no mesh workload: {exc}") from exc
    if signer.trust_domain != trust_domain or signer.service != SIGNER_SERVICE:
        raise JwksSignatureError(
            f"signed by {signer.uri}, not by an {SIGNER_SERVICE} identity of {trust_domain}"
        )
    return signer


def _issued_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
