"""The mesh CA, workload identity files and their rotation, and the caller policy's decisions."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from mesh import identity_files
from mesh.caller_policy import ANY_MESH_IDENTITY, CallerPolicyInterceptor
from mesh.certificate_authority import CertificateAuthority, CertificateAuthorityError
from mesh.identity_files import IdentityFilesError
from mesh.spiffe_id import SpiffeId, SpiffeIdError
from mesh.workload_identity import WorkloadIdentity


def test_ca_round_trip_keeps_its_key_private(tmp_path: Path) -> None:
    ca, created = CertificateAuthority.load_or_create(tmp_path / "ca", "example.test")
    assert created
    key_mode = stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode)
    assert key_mode == 0o600
    again, created_again = CertificateAuthority.load_or_create(tmp_path / "ca", "other.test")
    assert not created_again
    assert again.trust_domain == "example.test"
    assert again.cert_pem == ca.cert_pem


def test_ca_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    CertificateAuthority.create("example.test").save(tmp_path)
    (tmp_path / "ca-key.pem").chmod(0o644)
    with pytest.raises(CertificateAuthorityError, match="chmod 600"):
        CertificateAuthority.load(tmp_path)


def test_leaf_names_the_service_three_ways(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("example.test")
    leaf = ca.issue("etcd", "etcd-0", lifetime=dt.timedelta(seconds=60), hosts=["127.0.0.1", "etcd"])
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.test/etcd/etcd-0"]
    assert set(sans.get_values_for_type(x509.DNSName)) == {"etcd.example.test", "etcd"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "etcd"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(seconds=60) < lifetime <= dt.timedelta(seconds=121)
    cert.verify_directly_issued_by(ca.cert)


def test_spiffe_ids_are_checked() -> None:
    assert SpiffeId.parse("spiffe://a.b/ocr/ocr-1") == SpiffeId("a.b", "ocr", "ocr-1")
    for bad in ("spiffe://a.b/ocr", "http://a.b/ocr/x", "spiffe://A_B/ocr/x", "spiffe://a.b/evil/x"):
        with pytest.raises(SpiffeIdError):
            SpiffeId.parse(bad)


def test_identity_rotation_swaps_every_file_at_once(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("example.test")
    folder = tmp_path / "ocr"
    identity_files.write(folder, ca.issue("ocr", "ocr-1"), ca.cert_pem)
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    watched = WorkloadIdentity(folder)
    first = watched.current
    assert watched.generation == 1
    for _ in range(4):
        identity_files.write(folder, ca.issue("ocr", "ocr-1"), ca.cert_pem)
    assert watched.refresh(force=True)
    assert watched.generation == 2
    assert watched.current.cert_pem != first.cert_pem
    assert len(list(folder.glob(".v*"))) == 1 + identity_files.KEEP_VERSIONS


def test_a_broken_rotation_keeps_the_working_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("example.test")
    stranger = CertificateAuthority.create("example.test")
    folder = tmp_path / "ocr"
    identity_files.write(folder, ca.issue("ocr", "ocr-1"), ca.cert_pem)
    watched = WorkloadIdentity(folder)
    before = watched.current.cert_pem
    # A leaf from another CA, filed with our CA's certificate: not signed by it.
    identity_files.write(folder, stranger.issue("ocr", "ocr-1"), ca.cert_pem)
    with pytest.raises(IdentityFilesError, match="not signed"):
        identity_files.load(folder)
    assert not watched.refresh(force=True)
    assert watched.current.cert_pem == before


def test_missing_identity_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(IdentityFilesError, match="ocrmesh ca issue"):
        identity_files.load(tmp_path / "nothing")


def test_caller_policy_decisions() -> None:
    policy = CallerPolicyInterceptor(
        "example.test",
        {"ocrmesh.ocr.v1.OcrService": ("gateway", "cli"), "grpc.health.v1.Health": (ANY_MESH_IDENTITY,)},
        default=(),
    )
    gateway = SpiffeId("example.test", "gateway", "gw-1")
    ocr = SpiffeId("example.test", "ocr", "ocr-2")
    foreign = SpiffeId("elsewhere.test", "gateway", "gw-1")
    assert policy.allowed("/ocrmesh.ocr.v1.OcrService/Recognize", gateway)
    assert not policy.allowed("/ocrmesh.ocr.v1.OcrService/Recognize", ocr)
    assert not policy.allowed("/ocrmesh.ocr.v1.OcrService/Recognize", foreign)
    assert not policy.allowed("/ocrmesh.ocr.v1.OcrService/Recognize", None)
    assert policy.allowed("/grpc.health.v1.Health/Check", ocr)
    assert not policy.allowed("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", ocr)
