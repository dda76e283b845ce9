"""The pure function from registry state to a checked xDS snapshot, for a gateway or proxyless group."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from gateway import resources as rs
from gateway.host_names import is_ip
from gateway.profile import Profile
from gateway.snapshot import Snapshot
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER

OCR_SERVICE = "ocr"
AUTH_SERVICE = "auth"
LISTENER_NAME = "ocrmesh-gateway"
ROUTES_NAME = "ocrmesh-routes"
JWT_PROVIDER = "ocrmesh"

ROUTED = (
    # (path prefix, cluster, token required, retry on)
    (
        "/ocrmesh.ocr.v1.OcrService/",
        OCR_SERVICE,
        True,
        "unavailable,resource-exhausted,reset,connect-failure,refused-stream",
    ),
    # Register/Login are not idempotent: only retry what cannot have reached the service.
    ("/ocrmesh.auth.v1.AuthService/", AUTH_SERVICE, False, "unavailable,connect-failure,refused-stream"),
    ("/grpc.health.v1.Health/", OCR_SERVICE, False, "unavailable,connect-failure,refused-stream"),
    ("/grpc.reflection.", OCR_SERVICE, False, "connect-failure,refused-stream"),
)
HEALTH_SERVICE = {OCR_SERVICE: "ocrmesh.ocr.v1.OcrService", AUTH_SERVICE: "ocrmesh.auth.v1.AuthService"}

NO_JWKS_YET = (
    '{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"ocrmesh-no-jwks-yet",'
    '"x":"MirdlLdM1PX_vnMTXfBdtsZ35MTw6dsw0EN1c3ggl4M","y":"A0q9kVuyZdMZyri3AcxntObL0gHoP7IyqeGwcb4j6vc"}]}'
)
"""Stands in until auth publishes a JWKS: Envoy refuses an empty key set, and the private half of
this key was thrown away when it was made, so no token verifies and OCR calls are UNAUTHENTICATED."""
_ADS = {"ads": {}, "resource_api_version": "V3"}
_H2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": rs.typed("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
        "explicit_http_config": {
            "http2_protocol_options": {
                # PING every 2 s and drop a connection whose peer does not answer within 1 s: a
                # frozen (SIGSTOPped, partitioned) instance's calls are reset within ~3 s and
                # retried elsewhere, instead of hanging until the caller's deadline. A per-try
                # timeout cannot do this for OCR, whose legitimate calls may wait a minute in a queue.
                # The services accept pings 1 s apart (mesh/lifecycle.py), as from the mesh client.
                "connection_keepalive": {"interval": "2s", "timeout": "1s"}
            }
        },
    }
}


@dataclass(frozen=True)
class Endpoint:
    """One instance as xDS sees it: an IP address and port, a zone and a weight (0 = draining)."""

    id: str
    host: str
    port: int
    zone: str = ""
    weight: int = 100


@dataclass(frozen=True)
class MeshState:
    """Everything a snapshot is built from: endpoints by service and the JWKS text."""

    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    jwks: str = ""
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE


def load_assignment(service: str, endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    """ClusterLoadAssignment: one locality per zone, each with a positive weight (proxyless needs it)."""
    zones: dict[str, list[Endpoint]] = {}
    for ep in sorted(endpoints, key=lambda e: (e.zone, e.host, e.port, e.id)):
        zones.setdefault(ep.zone, []).append(ep)
    localities = []
    for zone, members in zones.items():
        lb_endpoints = [
            {
                "endpoint": {"address": {"socket_address": {"address": ep.host, "port_value": ep.port}}},
                "load_balancing_weight": max(ep.weight, 1),
                "health_status": "DRAINING" if ep.weight == 0 else "UNKNOWN",
                "metadata": {"filter_metadata": {"ocrmesh": {"instance_id": ep.id}}},
            }
            for ep in members
        ]
        localities.append(
            {
                "locality": {"zone": zone},
                "load_balancing_weight": max(1, sum(max(ep.weight, 1) for ep in members)),
                "lb_endpoints": lb_endpoints,
            }
        )
    return {"cluster_name": service, "endpoints": localities}


_H2_WITHOUT_KEEPALIVE = {
    name: {**options, "explicit_http_config": {"http2_protocol_options": {}}} for name, options in _H2.items()
}
"""Upstream HTTP/2 as before issue 17 (no PINGs): the hardening benchmark's unhardened gateway only."""


def gateway_cluster(service: str, hardened: bool = True) -> dict[str, Any]:
    """An EDS cluster for Envoy: HTTP/2, least request, breakers, outlier detection, gRPC health checks
    (`hardened` False, for the hardening benchmark only: no upstream keepalive)."""
    cluster: dict[str, Any] = {
        "name": service,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": _ADS},
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        # No panic routing: by default Envoy ignores health once under half the hosts are healthy
        # and spreads calls over all of them. Here an unhealthy host is dead, frozen or an impostor
        # whose certificate fails verification, so calls go only to healthy hosts, and with none
        # Envoy answers UNAVAILABLE at once ("no healthy upstream"), which callers retry.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        "typed_extension_protocol_options": _H2 if hardened else _H2_WITHOUT_KEEPALIVE,
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 4096,
                    "max_pending_requests": 4096,
                    "max_requests": 4096,
                    # Retries are bounded by a budget (20% of active requests, at least 16), not by
                    # Envoy's default of 3 concurrent retries, which a killed instance exceeds at once.
                    "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 16},
                }
            ]
        },
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 2,
            "consecutive_local_origin_failure": 2,
            "split_external_local_origin_errors": True,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "no_traffic_interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": HEALTH_SERVICE.get(service, "")},
            }
        ],
    }
    return cluster


def proxyless_cluster(service: str) -> dict[str, Any]:
    """An EDS cluster as gRPC's xDS client accepts it (round robin, no Envoy-only features)."""
    return {
        "name": service,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": _ADS},
        "lb_policy": "ROUND_ROBIN",
    }


SMALL_REQUEST_BYTES = 64 * 1024
"""What Envoy keeps of a request for retries on routes that take small messages (auth, health,
reflection): unauthenticated slow 21 MiB bodies to Health/Check once held ~13 MiB each."""


def _route(prefix: str, cluster: str, retry_on: str, buffer_bytes: int) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        # Retries need the request body kept: up to the OCR upload limit on OCR routes, little elsewhere.
        "request_body_buffer_limit": str(buffer_bytes),
        "route": {
            "cluster": cluster,
            "timeout": "0s",  # no fixed route timeout: the caller's grpc-timeout bounds the call
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            "retry_policy": {
                "retry_on": retry_on,
                "num_retries": 3,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": rs.typed(
                                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                            )
                        },
                    }
                ],
                "host_selection_retry_max_attempts": "3",
                "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
            },
        },
    }


def _kept_bytes(profile: Profile, cluster: str, token_required: bool) -> int:
    """Request bytes kept for retries: the upload limit on OCR routes (jwt_authn checks their token
    before any body is read), a small message's worth elsewhere (unhardened: the limit everywhere)."""
    if (cluster == OCR_SERVICE and token_required) or not profile.hardened:
        return profile.max_request_bytes
    return min(SMALL_REQUEST_BYTES, profile.max_request_bytes)


def route_config(profile: Profile) -> dict[str, Any]:
    """Routes by gRPC service name, CORS for the allowed origins, request bodies buffered up to the
    OCR limit."""
    host: dict[str, Any] = {
        "name": "ocrmesh",
        "domains": ["*"],
        "routes": [
            _route(prefix, cluster, retry_on, _kept_bytes(profile, cluster, required))
            for prefix, cluster, required, retry_on in ROUTED
        ],
    }
    if profile.cors_origins:  # none: the CORS filter adds no headers, so browsers on other sites are refused
        host["typed_per_filter_config"] = {"envoy.filters.http.cors": _cors_policy(profile.cors_origins)}
    return {"name": ROUTES_NAME, "virtual_hosts": [host]}


def _cors_policy(origins: tuple[str, ...]) -> dict[str, Any]:
    """Browsers on `origins` (exact matches; "*" for any) may call the gateway."""
    if "*" in origins:
        allowed: list[dict[str, Any]] = [{"safe_regex": {"regex": ".*"}}]
    else:
        allowed = [{"exact": origin} for origin in origins]
    return {
        "@type": rs.typed("envoy.extensions.filters.http.cors.v3.CorsPolicy"),
        "allow_origin_string_match": allowed,
        "allow_methods": "POST, GET, OPTIONS",
        "allow_headers": "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout,x-request-id",
        "expose_headers": "grpc-status,grpc-message,grpc-status-details-bin,x-request-id",
        "max_age": "600",
    }


def jwt_filter(state: MeshState, hardened: bool = True) -> dict[str, Any]:
    """jwt_authn: tokens checked against the inline JWKS from etcd on OCR routes only (`hardened`
    False, for the hardening benchmark only: from Envoy's default places, `?access_token=` too)."""
    jwks = state.jwks or NO_JWKS_YET
    jwt: dict[str, Any] = {
        "@type": rs.typed("envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"),
        "providers": {
            JWT_PROVIDER: {
                "issuer": state.issuer,
                "audiences": [state.audience],
                "local_jwks": {"inline_string": jwks},
                # Only the authorization header: Envoy's default also takes `?access_token=`, which
                # puts tokens into URLs, logs and browser histories.
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "forward": True,  # the OCR instances check the token themselves too
                "clock_skew_seconds": 30,
            }
        },
        "rules": [
            {"match": {"prefix": prefix}, "requires": {"provider_name": JWT_PROVIDER}}
            for prefix, _, required, _ in ROUTED
            if required
        ],
        "bypass_cors_preflight": True,
    }
    if not hardened:
        del jwt["providers"][JWT_PROVIDER]["from_headers"]
    return jwt


def _access_log(hardened: bool = True) -> list[dict[str, Any]]:
    fields = {
        "time": "%START_TIME%",
        # Without the query string: nothing secret in a URL is logged (unhardened: the full path).
        "method": "%PATH(NQ)%" if hardened else "%REQ(:PATH)%",
        "grpc_status": "%GRPC_STATUS_NUMBER%",
        "http_status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "upstream": "%UPSTREAM_HOST%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "bytes_in": "%BYTES_RECEIVED%",
    }
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": rs.typed("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"),
                "log_format": {"json_format": fields},
            },
        }
    ]


# Envoy's own refusals of gRPC-Web calls (jwt_authn's "Jwt is missing", the local rate limit, no
# healthy instance...) answer HTTP 200, trailers-only, with the gRPC status in grpc-status and the
# reason in grpc-message (Envoy's response code details, e.g. jwt_authn_access_denied{Jwt_is_missing}),
# as native gRPC gets from Envoy already. They used to keep the HTTP status (401), which Google's
# grpc-web client reports as "Http response at 400 or 500 level", losing the status and message.
# gRPC-Web is told apart by the x-grpc-web header its clients send (grpc-web, @improbable-eng,
# connect-web): the grpc_web filter has made every other mark look like native gRPC by then. The
# gRPC status per HTTP status is grpc's own mapping (doc/http-grpc-status-mapping.md), except 413
# and 429: RESOURCE_EXHAUSTED, as native gRPC gets for the local rate limit.
GRPC_STATUS_OF_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 413: 8, 429: 8, 502: 14, 503: 14, 504: 14}


def _grpc_local_reply(http: int | None, grpc_status: int) -> dict[str, Any]:
    """A local reply mapper: a gRPC-Web request's local reply with HTTP status `http` (None: any
    other error) becomes a trailers-only HTTP 200 with grpc-status `grpc_status`."""
    op, value = ("EQ", http) if http is not None else ("GE", 400)
    return {
        "filter": {
            "and_filter": {
                "filters": [
                    {
                        "status_code_filter": {
                            "comparison": {
                                "op": op,
                                "value": {"default_value": value, "runtime_key": f"grpc_local_reply_{value}"},
                            }
                        }
                    },
                    {"header_filter": {"header": {"name": "x-grpc-web", "present_match": True}}},
                ]
            }
        },
        "status_code": 200,
        "headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in (
                ("content-type", "application/grpc"),
                ("grpc-status", str(grpc_status)),
                ("grpc-message", "%RESPONSE_CODE_DETAILS%"),
            )
        ],
        # The reason is in grpc-message; an empty body makes the answer trailers-only.
        "body_format_override": {"text_format": ""},
    }


GRPC_WEB_LOCAL_REPLIES: dict[str, Any] = {
    "mappers": [
        *(_grpc_local_reply(http, grpc_status) for http, grpc_status in GRPC_STATUS_OF_HTTP.items()),
        _grpc_local_reply(None, 2),  # UNKNOWN
    ]
}


def gateway_listener(profile: Profile, state: MeshState) -> dict[str, Any]:
    """The one HTTP listener: gRPC over h2 (or gRPC-Web over HTTP/1.1), optionally TLS."""
    percent = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "ratelimit_on"}
    hcm: dict[str, Any] = {
        "@type": rs.typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        # The gateway is the edge: it appends the address its client connected from to
        # x-forwarded-for, and auth (believing only its trusted proxies) reads the last entry, so
        # login throttles key on the real client, not on Envoy. Whatever a client put there itself
        # stays before it and counts for nothing. (Off only in the hardening benchmark's unhardened arm.)
        "use_remote_address": profile.hardened,
        "rds": {"route_config_name": ROUTES_NAME, "config_source": _ADS},
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "stream_idle_timeout": "300s",
        "local_reply_config": GRPC_WEB_LOCAL_REPLIES,
        "http_filters": [
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": rs.typed("envoy.extensions.filters.http.cors.v3.Cors")},
            },
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": rs.typed("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb")},
            },
            {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_filter(state, profile.hardened)},
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": rs.typed("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
                    "stat_prefix": "gateway_rate_limit",
                    "token_bucket": {
                        "max_tokens": profile.rate_limit_burst,
                        "tokens_per_fill": profile.rate_limit_rps,
                        "fill_interval": "1s",
                    },
                    "filter_enabled": percent,
                    "filter_enforced": percent,
                    "rate_limited_as_resource_exhausted": True,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": rs.typed("envoy.extensions.filters.http.router.v3.Router")},
            },
        ],
    }
    if profile.access_log:
        hcm["access_log"] = _access_log(profile.hardened)
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if profile.tls_cert:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": rs.typed("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
                "common_tls_context": {
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": profile.tls_cert},
                            "private_key": {"filename": profile.tls_key},
                        }
                    ],
                    "alpn_protocols": ["h2", "http/1.1"],
                },
            },
        }
    return {
        "name": LISTENER_NAME,
        "address": {"socket_address": {"address": profile.host, "port_value": profile.port}},
        "filter_chains": [chain],
    }


def proxyless_listener(service: str) -> dict[str, Any]:
    """The api_listener gRPC's xDS client asks for when dialling xds:///<service>."""
    return {
        "name": service,
        "api_listener": {
            "api_listener": {
                "@type": rs.typed(
                    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
                ),
                "rds": {"route_config_name": f"{service}-proxyless", "config_source": _ADS},
                "http_filters": [
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": rs.typed("envoy.extensions.filters.http.router.v3.Router")},
                    }
                ],
            }
        },
    }


def proxyless_routes(service: str) -> dict[str, Any]:
    return {
        "name": f"{service}-proxyless",
        "virtual_hosts": [
            {
                "name": service,
                "domains": ["*"],
                "routes": [{"match": {"prefix": ""}, "route": {"cluster": service}}],
            }
        ],
    }


def usable_endpoints(state: MeshState) -> tuple[dict[str, tuple[Endpoint, ...]], list[str]]:
    """Endpoints with IP addresses (EDS carries no host names), and a note for each one left out."""
    kept: dict[str, tuple[Endpoint, ...]] = {}
    notes: list[str] = []
    for service, endpoints in state.endpoints.items():
        ok = []
        for ep in endpoints:
            if is_ip(ep.host) and 0 < ep.port < 65536:
                ok.append(ep)
            else:
                notes.append(
                    f"{service}/{ep.id}: {ep.host}:{ep.port} is not an IP address and port; left out"
                )
        kept[service] = tuple(ok)
    return kept, notes


class BuildMemo:
    """Messages built before, by what they were built from, so a rebuild parses only what changed.

    Turning dicts into protobuf messages (`json_format.ParseDict`) is most of a build's cost: at
    2,000 endpoints a full build took ~130 ms of CPU, and the registry changes one endpoint at a
    time. The memo keeps each endpoint's `LbEndpoint`, and the clusters, listeners and routes of
    each (profile, service names, JWKS); `build_snapshot` returns the same with or without it.
    Only what the last build used is kept, so the memo never outgrows the registry.
    """

    def __init__(self) -> None:
        self._lb: dict[Endpoint, Message] = {}
        self._used_lb: dict[Endpoint, Message] = {}
        self._fixed: dict[str, dict[str, dict[str, Message]]] = {}
        self._used_fixed: dict[str, dict[str, dict[str, Message]]] = {}

    def lb_endpoint(self, ep: Endpoint) -> Message:
        message = self._lb.get(ep) or self._used_lb.get(ep)
        if message is None:
            holder = rs.parse(rs.ENDPOINT, load_assignment("memo", (ep,)))
            message = holder.endpoints[0].lb_endpoints[0]
        self._used_lb[ep] = message
        return message

    def fixed(
        self, key: str, make: Callable[[], dict[str, dict[str, Message]]]
    ) -> dict[str, dict[str, Message]]:
        """Clusters, listeners and routes (by type, then name) for a key naming what they depend on."""
        found = self._fixed.get(key) or self._used_fixed.get(key)
        if found is None:
            found = make()
        self._used_fixed[key] = found
        return found

    def end_build(self) -> None:
        """Forget what the build that just ended did not use."""
        self._lb, self._used_lb = self._used_lb, {}
        self._fixed, self._used_fixed = self._used_fixed, {}


def _memo_assignment(memo: BuildMemo, service: str, endpoints: tuple[Endpoint, ...]) -> Message:
    """`load_assignment` as a message, from memoised `LbEndpoint`s (same content, same order)."""
    data = load_assignment(service, endpoints)
    order = sorted(endpoints, key=lambda e: (e.zone, e.host, e.port, e.id))
    for locality in data["endpoints"]:
        locality["lb_endpoints"] = []
    message = rs.parse(rs.ENDPOINT, data)
    zones = {loc.locality.zone: loc for loc in message.endpoints}
    for ep in order:
        zones[ep.zone].lb_endpoints.append(memo.lb_endpoint(ep))
    return message


def build_snapshot(state: MeshState, profile: Profile, memo: BuildMemo | None = None) -> Snapshot:
    """The checked snapshot for `profile`'s nodes; ValueError/InconsistentSnapshot if it cannot be.

    With a `memo` (kept by the caller from build to build), messages already built are reused.
    """
    if memo is None:
        return _build(state, profile)
    try:
        return _build_memo(state, profile, memo)
    finally:
        memo.end_build()


def _build(state: MeshState, profile: Profile) -> Snapshot:
    endpoints, notes = usable_endpoints(state)
    services = sorted({OCR_SERVICE, AUTH_SERVICE, *endpoints})
    raw: dict[str, list[dict[str, Any]]] = {t: [] for t in rs.ORDER}
    raw[rs.ENDPOINT] = [load_assignment(s, endpoints.get(s, ())) for s in services]
    raw[rs.CLUSTER], raw[rs.LISTENER], raw[rs.ROUTE] = _fixed_resources(state, profile, services)
    built: dict[str, dict[str, Message]] = {}
    for type_url, items in raw.items():
        built[type_url] = {}
        for data in items:
            message = rs.parse(type_url, data)
            built[type_url][str(data.get("name", data.get("cluster_name")))] = message
    return Snapshot(built, notes=tuple(notes)).check()


def _fixed_resources(
    state: MeshState, profile: Profile, services: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Clusters, listeners and route configs: everything but the endpoints."""
    if profile.kind == "proxyless":
        return (
            [proxyless_cluster(s) for s in services],
            [proxyless_listener(s) for s in services],
            [proxyless_routes(s) for s in services],
        )
    return (
        [gateway_cluster(s, profile.hardened) for s in services],
        [gateway_listener(profile, state)],
        [route_config(profile)],
    )


def _parsed(type_url: str, items: list[dict[str, Any]]) -> dict[str, Message]:
    return {str(data.get("name", data.get("cluster_name"))): rs.parse(type_url, data) for data in items}


def _build_memo(state: MeshState, profile: Profile, memo: BuildMemo) -> Snapshot:
    endpoints, notes = usable_endpoints(state)
    services = sorted({OCR_SERVICE, AUTH_SERVICE, *endpoints})
    built: dict[str, dict[str, Message]] = {t: {} for t in rs.ORDER}
    for service in services:
        built[rs.ENDPOINT][service] = _memo_assignment(memo, service, endpoints.get(service, ()))

    def make() -> dict[str, dict[str, Message]]:
        clusters, listeners, routes = _fixed_resources(state, profile, services)
        return {
            rs.CLUSTER: _parsed(rs.CLUSTER, clusters),
            rs.LISTENER: _parsed(rs.LISTENER, listeners),
            rs.ROUTE: _parsed(rs.ROUTE, routes),
        }

    # Everything but the endpoints depends on the profile, the service names and (the gateway's
    # listener) the JWKS and token claims: together they are the memo's key.
    key = "\n".join([profile.key, ",".join(services), state.jwks, state.issuer, state.audience])
    built.update(memo.fixed(key, make))
    return Snapshot(built, notes=tuple(notes)).check()
