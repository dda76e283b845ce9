"""Envoy's mTLS config (gateway/mesh_tls.py): upstream clusters, their secrets, the bootstrap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from gateway import resources as rs
from gateway.bootstraps import MESH_CERTIFICATES, envoy_bootstrap
from gateway.mesh_tls import CA_SECRET, CERT_SECRET, with_mesh_tls, xds_client_tls
from gateway.profile import PROXYLESS, Profile
from gateway.snapshot import InconsistentSnapshot, Snapshot
from gateway.snapshot_builder import Endpoint, MeshState, build_snapshot
from mesh import identity_files
from mesh.certificate_authority import CertificateAuthority
from mesh.identity_files import Identity
from tests.envoy_validation import assert_envoy_accepts

TD = "example.test"


def identity(tmp: Path, ca: CertificateAuthority, service: str) -> Identity:
    folder = tmp / service
    identity_files.write(folder, ca.issue(service, f"{service}-1"), ca.cert_pem)
    return identity_files.load(folder)


def snapshot() -> Snapshot:
    state = MeshState({"ocr": (Endpoint("o1", "127.0.0.1", 5001),), "auth": ()})
    return build_snapshot(state, Profile())


def upstream_context(snap: Snapshot, cluster: str) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext()
    assert snap.of(rs.CLUSTER)[cluster].transport_socket.typed_config.Unpack(context)
    return context


def test_gateway_clusters_get_mtls_naming_their_service_and_secrets_over_ads(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(TD)
    gateway = identity(tmp_path, ca, "gateway")
    plain = snapshot()
    secured = with_mesh_tls(plain, Profile(), gateway)
    assert set(secured.of(rs.SECRET)) == {CERT_SECRET, CA_SECRET}
    cert = secured.of(rs.SECRET)[CERT_SECRET]
    assert cert.tls_certificate.private_key.inline_string == gateway.key_pem.decode()
    for service in ("ocr", "auth"):
        common = upstream_context(secured, service).common_tls_context
        assert [c.name for c in common.tls_certificate_sds_secret_configs] == [CERT_SECRET]
        assert common.tls_certificate_sds_secret_configs[0].sds_config.HasField("ads")
        combined = common.combined_validation_context
        assert combined.validation_context_sds_secret_config.name == CA_SECRET
        [san] = combined.default_validation_context.match_typed_subject_alt_names
        assert san.matcher.prefix == f"spiffe://{TD}/{service}/"
        assert list(common.alpn_protocols) == ["h2"]
    # The built snapshot is left as it was (its messages may be memoised), and differs in version.
    assert not plain.of(rs.CLUSTER)["ocr"].HasField("transport_socket")
    assert secured.versions[rs.CLUSTER] != plain.versions[rs.CLUSTER]
    # A rotated certificate changes only the secrets.
    identity_files.write(tmp_path / "gateway", ca.issue("gateway", "gateway-1"), ca.cert_pem)
    rotated = with_mesh_tls(plain, Profile(), identity_files.load(tmp_path / "gateway"))
    assert rotated.versions[rs.SECRET] != secured.versions[rs.SECRET]
    assert rotated.versions[rs.CLUSTER] == secured.versions[rs.CLUSTER]


def test_proxyless_clusters_use_the_clients_certificates_and_an_xds_identity_needs_the_gateways_folder(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.create(TD)
    plain = snapshot()
    assert with_mesh_tls(plain, Profile(), None) is plain
    # Proxyless clients take their certificate from their own bootstrap's provider: no Secrets.
    state = MeshState({"ocr": (Endpoint("o1", "127.0.0.1", 5001),)})
    proxyless = with_mesh_tls(build_snapshot(state, PROXYLESS), PROXYLESS, identity(tmp_path, ca, "cli"))
    common = upstream_context(proxyless, "ocr").common_tls_context
    assert common.tls_certificate_provider_instance.instance_name == MESH_CERTIFICATES
    validation = common.combined_validation_context.default_validation_context
    assert validation.ca_certificate_provider_instance.instance_name == MESH_CERTIFICATES
    assert [m.prefix for m in validation.match_subject_alt_names] == [f"spiffe://{TD}/ocr/"]
    assert not proxyless.of(rs.SECRET)
    xds = identity(tmp_path, ca, "xds")
    with pytest.raises(ValueError, match="--identity-dir"):
        with_mesh_tls(plain, Profile(), xds)
    by_files = with_mesh_tls(plain, Profile(identity_dir="/run/gw"), xds)
    cert = by_files.of(rs.SECRET)[CERT_SECRET].tls_certificate
    assert cert.certificate_chain.filename == "/run/gw/cert.pem"
    assert cert.watched_directory.path == "/run/gw" and not cert.private_key.inline_string


def test_a_cluster_whose_secret_is_missing_is_inconsistent(tmp_path: Path) -> None:
    secured = with_mesh_tls(
        snapshot(), Profile(), identity(tmp_path, CertificateAuthority.create(TD), "gateway")
    )
    without = secured.with_resources(rs.SECRET, {})
    with pytest.raises(InconsistentSnapshot, match="secret"):
        without.check()


def test_bootstrap_dials_the_control_plane_over_mtls_from_file_sds(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(TD)
    identity(tmp_path, ca, "gateway")
    sds = tmp_path / "sds"
    sds.mkdir()
    tls = xds_client_tls(sds, tmp_path / "gateway", TD, "gateway")
    data = envoy_bootstrap("n", "127.0.0.1:18000", 9901, Profile(), xds_tls=tls)
    assert_envoy_accepts(data, tmp_path)
    context = tls_pb2.UpstreamTlsContext()
    typed = data["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    json_format.ParseDict({k: v for k, v in typed.items() if k != "@type"}, context)
    [config] = context.common_tls_context.tls_certificate_sds_secret_configs
    written: dict[str, Any] = json.loads(Path(config.sds_config.path_config_source.path).read_text())
    [secret] = written["resources"]
    assert secret["tls_certificate"]["watched_directory"]["path"] == str((tmp_path / "gateway").resolve())
    san = context.common_tls_context.combined_validation_context.default_validation_context
    assert san.match_typed_subject_alt_names[0].matcher.prefix == f"spiffe://{TD}/gateway/"
