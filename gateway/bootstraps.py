"""Bootstrap documents: Envoy's (ADS to our control plane, loopback admin) and gRPC's proxyless one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from gateway.host_names import is_ip
from gateway.profile import GATEWAY_CLUSTER, PROXYLESS_CLUSTER, Profile

_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def split_hostport(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" / "[v6]:port"; ValueError saying what is expected."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:18000")
    return host.strip("[]"), int(port)


def overload_manager(max_heap_bytes: int, max_connections: int) -> dict[str, Any]:
    """Envoy's memory ceiling: past 90 % of `max_heap_bytes` it gives freed memory back to the
    system, past 95 % it stops accepting new requests (answering 503) until memory falls again;
    at most `max_connections` downstream connections are open at once."""
    monitor = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": monitor,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3."
                    "FixedHeapConfig",
                    "max_heap_size_bytes": str(max_heap_bytes),
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                    "downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": str(max_connections),
                },
            },
        ],
        "actions": [
            {
                "name": "envoy.overload_actions.shrink_heap",
                "triggers": [{"name": monitor, "threshold": {"value": 0.90}}],
            },
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": monitor, "threshold": {"value": 0.95}}],
            },
        ],
    }


def envoy_bootstrap(
    node_id: str,
    xds: str,
    admin_port: int,
    profile: Profile,
    *,
    delta: bool = False,
    max_heap_bytes: int = 512 * 2**20,
    max_connections: int = 10_000,
    xds_tls: dict[str, Any] | None = None,
    overload: bool = True,
) -> dict[str, Any]:
    """Envoy's bootstrap: node (with the listener profile as metadata), loopback admin, ADS (delta
    or not; over `xds_tls`, a transport_socket, when given), and the overload manager that holds
    Envoy under `max_heap_bytes` (`overload` False, for the hardening benchmark only: none)."""
    xds_host, xds_port = split_hostport(xds)
    ads = {"ads": {}, "resource_api_version": "V3"}
    bootstrap: dict[str, Any] = {
        "node": {"id": node_id, "cluster": GATEWAY_CLUSTER, "metadata": profile.metadata()},
        # Admin can reconfigure and stop Envoy: it never listens beyond loopback.
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC" if is_ip(xds_host) else "STRICT_DNS",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        _OPTIONS: {
                            "@type": "type.googleapis.com/" + _OPTIONS,
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {"interval": "5s", "timeout": "5s"}
                                }
                            },
                        }
                    },
                }
            ]
        },
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {}}]},
    }
    if overload:
        bootstrap["overload_manager"] = overload_manager(max_heap_bytes, max_connections)
    if xds_tls is not None:
        bootstrap["static_resources"]["clusters"][0]["transport_socket"] = xds_tls
    return bootstrap


MESH_CERTIFICATES = "mesh"
"""The certificate provider instance (gRPC bootstrap) holding a proxyless client's mesh identity,
which the control plane's proxyless clusters name for their mTLS (gateway/mesh_tls.py)."""


def grpc_bootstrap(xds: str, node_id: str | None = None, identity_dir: Path | None = None) -> dict[str, Any]:
    """gRPC's xDS bootstrap (GRPC_XDS_BOOTSTRAP_CONFIG) pointing at our control plane: plaintext, or
    with the identity folder `identity_dir` mTLS to the control plane (the `tls` channel creds; its
    certificate must name the host of `xds`) and the folder as certificate provider MESH_CERTIFICATES,
    re-read as it rotates, for mTLS to the instances."""
    creds: list[dict[str, Any]] = [{"type": "insecure"}]
    doc: dict[str, Any] = {}
    if identity_dir is not None:
        folder = identity_dir.resolve()
        files = {
            "certificate_file": str(folder / "cert.pem"),
            "private_key_file": str(folder / "key.pem"),
            "ca_certificate_file": str(folder / "ca.pem"),
            "refresh_interval": "10s",
        }
        creds = [{"type": "tls", "config": files}]
        doc["certificate_providers"] = {MESH_CERTIFICATES: {"plugin_name": "file_watcher", "config": files}}
    return {
        "xds_servers": [{"server_uri": xds, "channel_creds": creds, "server_features": ["xds_v3"]}],
        "node": {
            "id": node_id or f"proxyless-{socket.gethostname()}-{os.getpid()}",
            "cluster": PROXYLESS_CLUSTER,
            "locality": {"zone": ""},
        },
        **doc,
    }


def grpc_bootstrap_env(
    xds: str, node_id: str | None = None, identity_dir: Path | None = None
) -> dict[str, str]:
    """The environment that makes `xds:///NAME` targets of this process use our control plane."""
    return {"GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(grpc_bootstrap(xds, node_id, identity_dir))}
