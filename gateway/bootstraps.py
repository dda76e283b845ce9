"""Bootstrap documents: Envoy's (ADS to our control plane, loopback admin) and gRPC's proxyless one."""

from __future__ import annotations

import json
import os
import socket
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


def envoy_bootstrap(
    node_id: str, xds: str, admin_port: int, profile: Profile, *, delta: bool = False
) -> dict[str, Any]:
    """Envoy's bootstrap: node (with the listener profile as metadata), loopback admin, ADS (delta or not)."""
    xds_host, xds_port = split_hostport(xds)
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
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


def grpc_bootstrap(xds: str, node_id: str | None = None) -> dict[str, Any]:
    """gRPC's xDS bootstrap (GRPC_XDS_BOOTSTRAP_CONFIG) pointing at our control plane, plaintext."""
    return {
        "xds_servers": [
            {
                "server_uri": xds,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": node_id or f"proxyless-{socket.gethostname()}-{os.getpid()}",
            "cluster": PROXYLESS_CLUSTER,
            "locality": {"zone": ""},
        },
    }


def grpc_bootstrap_env(xds: str, node_id: str | None = None) -> dict[str, str]:
    """The environment that makes `xds:///NAME` targets of this process use our control plane."""
    return {"GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(grpc_bootstrap(xds, node_id))}
