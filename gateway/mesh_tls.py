"""Envoy's mTLS into the mesh: upstream clusters that accept only the service they are for, the
secrets (Envoy's certificate, the mesh CA) they take over SDS, and the bootstrap's TLS to the
control plane.

Upstream secrets travel as Secret resources on the same ADS stream as the rest of the config
(`sds_config: {ads: {}}`): a control plane holding the gateway's identity (the one in `ocrmesh
serve gateway`) sends the PEMs inline and pushes new ones when its identity folder rotates; one
that does not (`ocrmesh serve xds`, when the Envoy's node metadata names its own identity folder)
sends Secrets naming the files there, which Envoy re-reads when the folder's `current` link is
swapped (`watched_directory`). Only a caller whose certificate names the `gateway` service gets
Secret resources at all. The bootstrap's own cluster to the control plane cannot get its
certificate from that control plane, so it reads the identity folder through file-based SDS.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from gateway import resources as rs
from gateway.bootstraps import MESH_CERTIFICATES
from gateway.profile import Profile
from gateway.snapshot import Snapshot
from mesh.caller_policy import ANY_MESH_IDENTITY, CallerPolicyInterceptor, caller_identity
from mesh.identity_files import CA_FILE, CERT_FILE, KEY_FILE, Identity
from mesh.spiffe_id import service_dns_name

CERT_SECRET = "ocrmesh-mesh-cert"
"""The Secret holding Envoy's own mesh certificate and key (its client certificate upstream)."""
CA_SECRET = "ocrmesh-mesh-ca"
"""The Secret holding the mesh CA certificate, the only issuer upstream certificates may have."""
XDS_CERT_SECRET = "ocrmesh-xds-client-cert"
XDS_CA_SECRET = "ocrmesh-xds-ca"
GATEWAY_SERVICE = "gateway"
XDS_CALLERS = ("gateway", "cli", "bff", "admin")
"""Mesh identities that may open an ADS stream: gateways' Envoys and proxyless gRPC clients
(people's commands, benchmarks, the BFF). Secrets go to `gateway` callers only."""
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

_TLS = "envoy.transport_sockets.tls"
_ADS = {"ads": {}, "resource_api_version": "V3"}


def spiffe_prefix(trust_domain: str, service: str) -> str:
    """`spiffe://<td>/<service>/`: every instance of `service` has a URI SAN starting so."""
    return f"spiffe://{trust_domain}/{service}/"


def upstream_tls_context(
    service: str, trust_domain: str, cert: dict[str, Any], ca: dict[str, Any]
) -> dict[str, Any]:
    """An UpstreamTlsContext (proto JSON) for a cluster of `service`: Envoy presents the certificate
    of SdsSecretConfig `cert`, trusts only the CA of `ca`, and completes the handshake only with a
    peer whose URI SAN is an instance of `service` (the registry binding: an endpoint registered as
    S gets traffic only if its certificate names S)."""
    return {
        "@type": rs.typed("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
        "sni": service_dns_name(service, trust_domain),
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [cert],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": spiffe_prefix(trust_domain, service)}}
                    ]
                },
                "validation_context_sds_secret_config": ca,
            },
        },
    }


def _transport_socket(context: dict[str, Any]) -> dict[str, Any]:
    return {"name": _TLS, "typed_config": context}


@functools.lru_cache(maxsize=256)
def _cluster_socket(service: str, trust_domain: str) -> bytes:
    """The serialized TransportSocket of a gateway cluster (built once per service and domain)."""
    context = upstream_tls_context(
        service,
        trust_domain,
        {"name": CERT_SECRET, "sds_config": _ADS},
        {"name": CA_SECRET, "sds_config": _ADS},
    )
    socket = base_pb2.TransportSocket()
    json_format.ParseDict(_transport_socket(context), socket)
    return bytes(socket.SerializeToString(deterministic=True))


@functools.lru_cache(maxsize=256)
def _proxyless_socket(service: str, trust_domain: str) -> bytes:
    """The serialized TransportSocket of a proxyless cluster: gRPC's xDS security (gRFC A29) takes
    the certificate and the CA from the client's own certificate provider (its bootstrap names the
    identity folder) and requires the peer's SAN to name an instance of `service`."""
    context = {
        "@type": rs.typed("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
        "common_tls_context": {
            "tls_certificate_provider_instance": {"instance_name": MESH_CERTIFICATES},
            "combined_validation_context": {
                "default_validation_context": {
                    "ca_certificate_provider_instance": {"instance_name": MESH_CERTIFICATES},
                    "match_subject_alt_names": [{"prefix": spiffe_prefix(trust_domain, service)}],
                }
            },
        },
    }
    socket = base_pb2.TransportSocket()
    json_format.ParseDict(_transport_socket(context), socket)
    return bytes(socket.SerializeToString(deterministic=True))


def inline_secrets(identity: Identity) -> list[dict[str, Any]]:
    """Envoy's certificate and the mesh CA as Secrets (proto JSON) carrying the PEMs themselves."""
    return [
        {
            "name": CERT_SECRET,
            "tls_certificate": {
                "certificate_chain": {"inline_string": identity.cert_pem.decode()},
                "private_key": {"inline_string": identity.key_pem.decode()},
            },
        },
        {
            "name": CA_SECRET,
            "validation_context": {"trusted_ca": {"inline_string": identity.ca_pem.decode()}},
        },
    ]


def file_secrets(
    directory: str, cert_name: str = CERT_SECRET, ca_name: str = CA_SECRET
) -> list[dict[str, Any]]:
    """The same Secrets naming the files of identity folder `directory` (on Envoy's host); Envoy
    re-reads them when the folder's `current` link is swapped (identity_files.write)."""
    folder = Path(directory)
    watched = {"path": str(folder)}
    return [
        {
            "name": cert_name,
            "tls_certificate": {
                "certificate_chain": {"filename": str(folder / CERT_FILE)},
                "private_key": {"filename": str(folder / KEY_FILE)},
                "watched_directory": watched,
            },
        },
        {
            "name": ca_name,
            "validation_context": {
                "trusted_ca": {"filename": str(folder / CA_FILE)},
                "watched_directory": watched,
            },
        },
    ]


def with_mesh_tls(snapshot: Snapshot, profile: Profile, identity: Identity | None) -> Snapshot:
    """`snapshot` with mTLS to every upstream cluster when the control plane runs with mesh
    identity `identity` (unchanged without one): for Envoy with the Secrets its clusters take, for
    proxyless gRPC from each client's own certificate provider. ValueError when there is no way to
    give Envoy its certificate."""
    if identity is None:
        return snapshot
    trust_domain = identity.spiffe_id.trust_domain
    if profile.kind == "proxyless":
        return _secured(snapshot, trust_domain, _proxyless_socket, {})
    if profile.identity_dir:
        secrets = file_secrets(profile.identity_dir)
    elif identity.spiffe_id.service == GATEWAY_SERVICE:
        secrets = inline_secrets(identity)
    else:
        raise ValueError(
            f"this control plane runs as {identity.spiffe_id.uri}, not as the gateway, and the gateway "
            "node named no identity folder: start the gateway with --identity-dir"
        )
    return _secured(snapshot, trust_domain, _cluster_socket, {str(s["name"]): s for s in secrets})


def _secured(
    snapshot: Snapshot,
    trust_domain: str,
    socket_of: Callable[[str, str], bytes],
    secrets: dict[str, dict[str, Any]],
) -> Snapshot:
    """A copy of `snapshot` whose clusters have the transport socket `socket_of(name, td)`, plus
    `secrets`; the messages of `snapshot` are left as they were (a builder may reuse them)."""
    clusters: dict[str, cluster_pb2.Cluster] = {}
    for name, cluster in snapshot.of(rs.CLUSTER).items():
        secured = cluster_pb2.Cluster()
        secured.CopyFrom(cluster)
        secured.transport_socket.ParseFromString(socket_of(name, trust_domain))
        clusters[name] = secured
    resources = {
        **snapshot.resources,
        rs.CLUSTER: clusters,
        rs.SECRET: {name: rs.parse(rs.SECRET, s) for name, s in secrets.items()},
    }
    return Snapshot(resources, notes=snapshot.notes).check()


def may_fetch_secrets(context: Any) -> bool:
    """Whether the caller of an ADS stream may receive Secret resources: only a `gateway`."""
    caller = caller_identity(context)
    return caller is not None and caller.service == GATEWAY_SERVICE


def xds_interceptors(trust_domain: str | None) -> list[grpc.aio.ServerInterceptor]:
    """The xDS server's caller policy (none when it runs plaintext)."""
    if trust_domain is None:
        return []
    return [CallerPolicyInterceptor(trust_domain, {ADS_SERVICE: XDS_CALLERS}, default=(ANY_MESH_IDENTITY,))]


def xds_client_tls(folder: Path, identity_dir: Path, trust_domain: str, xds_service: str) -> dict[str, Any]:
    """The bootstrap's transport_socket to the control plane: Envoy's certificate and the CA from
    file-based SDS over `identity_dir` (JSON files written into `folder`), the peer required to be
    an instance of `xds_service` (`gateway` for the in-process control plane, `xds` for one alone)."""
    configs = {}
    for secret in file_secrets(str(identity_dir.resolve()), XDS_CERT_SECRET, XDS_CA_SECRET):
        path = folder / f"{secret['name']}.json"
        path.write_text(json.dumps({"resources": [{"@type": rs.SECRET, **secret}]}))
        configs[secret["name"]] = {
            "name": secret["name"],
            "sds_config": {"path_config_source": {"path": str(path)}, "resource_api_version": "V3"},
        }
    context = upstream_tls_context(
        xds_service, trust_domain, configs[XDS_CERT_SECRET], configs[XDS_CA_SECRET]
    )
    return _transport_socket(context)
