"""A workload's identity directory: cert.pem, key.pem and ca.pem, swapped whole on rotation.

The layout is the one kubelet gives a mounted Secret: the three names are symlinks into
`current`, itself a symlink to a versioned folder, so a writer swaps every file in one rename
and a reader never mixes one version's key with another's certificate. etcd and Envoy read the
same files (Envoy watches the directory for the swap); our services re-read them (`load`).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from mesh.certificate_authority import Leaf
from mesh.spiffe_id import SpiffeId, SpiffeIdError

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
CURRENT = "current"
KEEP_VERSIONS = 2
"""Old versions kept after a swap, for readers that resolved the previous link a moment ago."""


class IdentityFilesError(Exception):
    """An identity directory is missing, incomplete or holds a certificate that is not a mesh leaf."""


@dataclass(frozen=True)
class Identity:
    """One version of a workload's credentials, read from its directory."""

    spiffe_id: SpiffeId
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime

    def remaining(self, now: dt.datetime | None = None) -> dt.timedelta:
        """How long until the certificate expires."""
        return self.not_after - (now or dt.datetime.now(dt.UTC))


def write(directory: Path, leaf: Leaf, ca_pem: bytes, owner: tuple[int, int] | None = None) -> Path:
    """Write `leaf` and the CA certificate as a new version and swap it in; returns the version folder.

    The directory is 0700 and the key 0600: only the workload's user reads them. With `owner`
    (uid, gid) the directory and every file are handed to that user before the swap, for a writer
    (a container's issuer, as root) filling a folder another user's workload reads.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if owner is not None:
        _own(directory, owner, mode=0o700)
    version = directory / f".v{time.time_ns()}"
    version.mkdir(mode=0o700)
    (version / CERT_FILE).write_bytes(leaf.cert_pem)
    (version / CA_FILE).write_bytes(ca_pem)
    fd = os.open(version / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(leaf.key_pem)
    if owner is not None:
        for made in (version / CERT_FILE, version / CA_FILE, version / KEY_FILE, version):
            os.chown(made, *owner)
    link = directory / f".{CURRENT}.{os.getpid()}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(version.name)
    if owner is not None:
        os.lchown(link, *owner)
    link.replace(directory / CURRENT)
    for name in (CERT_FILE, KEY_FILE, CA_FILE):
        entry = directory / name
        if not entry.is_symlink():
            entry.unlink(missing_ok=True)
            entry.symlink_to(f"{CURRENT}/{name}")
            if owner is not None:
                os.lchown(entry, *owner)
    _prune(directory, keep=version.name)
    return version


def _own(directory: Path, owner: tuple[int, int], mode: int) -> None:
    """Give `directory` to `owner` with `mode`, touching only what differs (a volume's root is
    made by the container engine, owned by root)."""
    st = directory.stat()
    if st.st_mode & 0o777 != mode:  # before giving it away: changing another's mode needs CAP_FOWNER
        directory.chmod(mode)
    if (st.st_uid, st.st_gid) != owner:
        os.chown(directory, *owner)


def _prune(directory: Path, keep: str) -> None:
    versions = sorted(p for p in directory.glob(".v*") if p.is_dir() and p.name != keep)
    for old in versions[: max(0, len(versions) - KEEP_VERSIONS)]:
        for child in old.iterdir():
            child.unlink()
        old.rmdir()


def load(directory: Path) -> Identity:
    """The identity in `directory`, checked: a mesh leaf whose key matches, signed by the CA there."""
    try:
        cert_pem = (directory / CERT_FILE).read_bytes()
        key_pem = (directory / KEY_FILE).read_bytes()
        ca_pem = (directory / CA_FILE).read_bytes()
    except OSError as exc:
        raise IdentityFilesError(
            f"no workload identity in {directory} ({exc.strerror}: {exc.filename}); issue one with "
            f"`ocrmesh ca issue SERVICE --out {directory}` or run under `ocrmesh up`"
        ) from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityFilesError(f"{directory} holds an unreadable certificate or key: {exc}") from exc
    if key.public_key() != cert.public_key():
        raise IdentityFilesError(f"{directory}: key.pem does not belong to cert.pem (mid-rotation?)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityFilesError(f"{directory}: cert.pem is not signed by ca.pem") from exc
    return Identity(
        spiffe_id=spiffe_id_of(cert),
        cert_pem=cert_pem,
        key_pem=key_pem,
        ca_pem=ca_pem,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The one spiffe:// URI SAN a mesh leaf carries, or IdentityFilesError."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise IdentityFilesError("the certificate has no subject alternative names") from exc
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise IdentityFilesError(f"a mesh leaf names exactly one spiffe:// URI, this one {len(uris)}")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise IdentityFilesError(str(exc)) from exc
