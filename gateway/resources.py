"""xDS type URLs and turning plain dicts into typed Envoy messages (imports every config type used)."""

from __future__ import annotations

from typing import Any

# Importing these registers their descriptors, so `"@type"` in a dict resolves when it is parsed.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2  # noqa: F401
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import (
    secret_pb2,
    tls_pb2,  # noqa: F401
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format
from google.protobuf.message import Message

PREFIX = "type.googleapis.com/"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

ORDER = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""The order updates go out in: the secrets clusters use, clusters and their endpoints, then the
listeners and routes using them."""

MESSAGE: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SECRET: secret_pb2.Secret,
}
SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
HCM = hcm_pb2.HttpConnectionManager


def typed(name: str) -> str:
    """The `@type` of an Envoy message by its full name."""
    return PREFIX + name


def parse(type_url: str, data: dict[str, Any]) -> Message:
    """The typed message for `data` (proto JSON field names), ValueError naming the bad field."""
    message = MESSAGE[type_url]()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise ValueError(f"{SHORT[type_url]} resource {data.get('name', '?')!r}: {exc}") from None
    return message


def hcm_of(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager | None:
    """The HttpConnectionManager of a listener (api_listener or first filter chain), if any."""
    config = hcm_pb2.HttpConnectionManager()
    if listener.HasField("api_listener"):
        listener.api_listener.api_listener.Unpack(config)
        return config
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.Is(config.DESCRIPTOR):
                network_filter.typed_config.Unpack(config)
                return config
    return None
