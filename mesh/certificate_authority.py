"""The mesh CA: an ECDSA P-256 root for one trust domain, and the short-lived leaves it signs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.spiffe_id import SpiffeId, check_trust_domain

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
ROOT_LIFETIME = dt.timedelta(days=3650)
DEFAULT_LEAF_LIFETIME = dt.timedelta(hours=24)
CLOCK_SKEW = dt.timedelta(minutes=1)
"""Leaves are valid from this long before they are signed, for hosts whose clocks lag a little."""


class CertificateAuthorityError(Exception):
    """The CA's files are missing, unreadable or not a mesh CA; the message says what to do."""


@dataclass(frozen=True)
class Leaf:
    """A signed workload certificate and its private key, both PEM."""

    identity: SpiffeId
    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by its owner only (0600 from creation, never wider)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


class CertificateAuthority:
    """A root certificate and key for one trust domain; signs workload leaves."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        self.trust_domain = _trust_domain_of(cert)

    @property
    def cert_pem(self) -> bytes:
        """The root certificate, PEM: what every workload trusts."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, trust_domain: str) -> CertificateAuthority:
        """A new root for `trust_domain` (in memory; `save` writes it)."""
        check_trust_domain(trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocrmesh"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"ocrmesh mesh CA for {trust_domain}"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        """Write ca.pem (world-readable) and ca-key.pem (0600) into `directory` (made 0700)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(directory / CA_KEY_FILE, self._key_pem())
        (directory / CA_CERT_FILE).write_bytes(self.cert_pem)

    def _key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA saved in `directory`, or CertificateAuthorityError saying how to make one."""
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if not cert_path.exists() or not key_path.exists():
            raise CertificateAuthorityError(
                f"no mesh CA in {directory} (need {CA_CERT_FILE} and {CA_KEY_FILE}); "
                f"make one with `ocrmesh ca init --dir {directory}`"
            )
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise CertificateAuthorityError(
                f"{key_path} is readable by others (mode {mode:o}); the CA key must be 0600: "
                f"chmod 600 {key_path}"
            )
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateAuthorityError(f"{directory} holds no readable CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateAuthorityError(f"{key_path} is not an ECDSA key")
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, directory: Path, trust_domain: str) -> tuple[CertificateAuthority, bool]:
        """The CA in `directory`, made and saved first when there is none; (ca, created)."""
        if (directory / CA_CERT_FILE).exists():
            return cls.load(directory), False
        made = cls.create(trust_domain)
        made.save(directory)
        return made, True

    def issue(
        self,
        service: str,
        instance: str,
        lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
        hosts: Sequence[str] = (),
    ) -> Leaf:
        """A new key and a leaf for `spiffe://<td>/<service>/<instance>`, valid for `lifetime`.

        The leaf names the service three ways: the SPIFFE URI (who exactly), the DNS name
        `<service>.<td>` (what clients check in the handshake) and the common name `<service>`
        (what etcd takes as the user name for its RBAC). `hosts` adds DNS or IP names the
        workload is also dialled by (etcd's clients dial an address, not a service name).
        """
        identity = SpiffeId(self.trust_domain, service, instance)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(identity.uri),
            x509.DNSName(identity.dns_name),
        ]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = _now()
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocrmesh"),
                        x509.NameAttribute(NameOID.COMMON_NAME, service),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(
            identity=identity,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            not_after=not_after,
        )


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """A root signs certificates (and CRLs); a leaf signs handshakes and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not signs_certificates,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _trust_domain_of(cert: x509.Certificate) -> str:
    """The trust domain a root names in its `spiffe://<td>` URI SAN."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateAuthorityError("the CA certificate names no spiffe:// trust domain") from exc
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return check_trust_domain(uri.removeprefix("spiffe://").rstrip("/"))
    raise CertificateAuthorityError("the CA certificate names no spiffe:// trust domain")
