"""The pure snapshot builder: consistency, content-hash versions, and what the gateway config holds."""

from __future__ import annotations

import json

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

from gateway import resources as rs
from gateway.profile import PROXYLESS, Profile
from gateway.snapshot import InconsistentSnapshot
from gateway.snapshot_builder import (
    NO_JWKS_YET,
    ROUTES_NAME,
    SMALL_REQUEST_BYTES,
    Endpoint,
    MeshState,
    build_snapshot,
)

JWKS = '{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"a","y":"b"}]}'


def state(*ocr: Endpoint, jwks: str = JWKS) -> MeshState:
    return MeshState({"ocr": tuple(ocr), "auth": (Endpoint("a1", "127.0.0.1", 50050),)}, jwks=jwks)


def test_every_route_and_eds_cluster_resolves() -> None:
    snap = build_snapshot(state(Endpoint("o1", "127.0.0.1", 50051)), Profile(port=8080))
    assert snap.problems() == []
    clusters = snap.of(rs.CLUSTER)
    assert set(clusters) == {"ocr", "auth"} == set(snap.of(rs.ENDPOINT))
    routes = snap.of(rs.ROUTE)[ROUTES_NAME]
    targets = {r.match.prefix: r.route.cluster for r in routes.virtual_hosts[0].routes}
    assert targets["/ocrmesh.ocr.v1.OcrService/"] == "ocr"
    assert targets["/ocrmesh.auth.v1.AuthService/"] == "auth"
    assert all(t in clusters for t in targets.values())


def test_version_is_a_content_hash() -> None:
    a = build_snapshot(state(Endpoint("o1", "127.0.0.1", 50051)), Profile())
    b = build_snapshot(state(Endpoint("o1", "127.0.0.1", 50051)), Profile())
    c = build_snapshot(
        state(Endpoint("o1", "127.0.0.1", 50051), Endpoint("o2", "127.0.0.1", 50052)), Profile()
    )
    assert a.version == b.version and a.versions == b.versions
    assert c.version != a.version
    # Only the endpoints changed: clusters, listeners and routes keep their versions (no re-push).
    assert c.versions[rs.ENDPOINT] != a.versions[rs.ENDPOINT]
    for type_url in (rs.CLUSTER, rs.LISTENER, rs.ROUTE):
        assert c.versions[type_url] == a.versions[type_url]


def test_jwks_rotation_changes_only_the_listener() -> None:
    a = build_snapshot(state(), Profile())
    b = build_snapshot(state(jwks=JWKS.replace("k1", "k2")), Profile())
    assert a.versions[rs.LISTENER] != b.versions[rs.LISTENER]
    assert a.versions[rs.CLUSTER] == b.versions[rs.CLUSTER]


def _jwt(snap_listener: object) -> jwt_pb2.JwtAuthentication:
    hcm = rs.hcm_of(snap_listener)
    assert hcm is not None
    config = jwt_pb2.JwtAuthentication()
    [jwt] = [f for f in hcm.http_filters if f.name == "envoy.filters.http.jwt_authn"]
    jwt.typed_config.Unpack(config)
    return config


def test_jwt_required_on_ocr_only_and_token_forwarded() -> None:
    snap = build_snapshot(state(), Profile())
    config = _jwt(snap.of(rs.LISTENER)["ocrmesh-gateway"])
    assert [r.match.prefix for r in config.rules] == ["/ocrmesh.ocr.v1.OcrService/"]
    provider = config.providers["ocrmesh"]
    assert provider.forward and json.loads(provider.local_jwks.inline_string) == json.loads(JWKS)
    assert provider.issuer == "ocrmesh-auth" and list(provider.audiences) == ["ocrmesh"]
    # From the authorization header only: no `?access_token=` (Envoy's default also reads it).
    assert [(h.name, h.value_prefix) for h in provider.from_headers] == [("authorization", "Bearer ")]
    assert list(provider.from_params) == []


def test_only_ocr_routes_keep_large_bodies_for_retries() -> None:
    snap = build_snapshot(state(), Profile(max_request_bytes=21 << 20))
    routes = snap.of(rs.ROUTE)[ROUTES_NAME].virtual_hosts[0].routes
    kept = {r.match.prefix: r.request_body_buffer_limit.value for r in routes}
    assert kept["/ocrmesh.ocr.v1.OcrService/"] == 21 << 20
    assert all(v == SMALL_REQUEST_BYTES for p, v in kept.items() if p != "/ocrmesh.ocr.v1.OcrService/"), kept


def test_no_jwks_yet_uses_a_key_nobody_holds() -> None:
    config = _jwt(build_snapshot(state(jwks=""), Profile()).of(rs.LISTENER)["ocrmesh-gateway"])
    assert config.providers["ocrmesh"].local_jwks.inline_string == NO_JWKS_YET


def test_filter_order_and_rate_limit_status() -> None:
    listener = build_snapshot(state(), Profile(rate_limit_rps=7, rate_limit_burst=9)).of(rs.LISTENER)[
        "ocrmesh-gateway"
    ]
    hcm = rs.hcm_of(listener)
    assert hcm is not None
    names = [f.name for f in hcm.http_filters]
    assert names[-1] == "envoy.filters.http.router"
    assert names.index("envoy.filters.http.cors") < names.index("envoy.filters.http.jwt_authn")
    assert len(hcm.access_log) == 1
    [rl] = [f for f in hcm.http_filters if f.name == "envoy.filters.http.local_ratelimit"]
    config = local_rate_limit_pb2.LocalRateLimit()
    rl.typed_config.Unpack(config)
    assert config.rate_limited_as_resource_exhausted
    assert (config.token_bucket.tokens_per_fill.value, config.token_bucket.max_tokens) == (7, 9)


def test_tls_listener_has_a_transport_socket() -> None:
    plain = build_snapshot(state(), Profile()).of(rs.LISTENER)["ocrmesh-gateway"]
    tls = build_snapshot(state(), Profile(tls_cert="/c.pem", tls_key="/k.pem")).of(rs.LISTENER)[
        "ocrmesh-gateway"
    ]
    assert not plain.filter_chains[0].HasField("transport_socket")
    assert tls.filter_chains[0].transport_socket.name == "envoy.transport_sockets.tls"
    with pytest.raises(ValueError, match="both"):
        Profile(tls_cert="/c.pem")


def test_gateway_cluster_policies() -> None:
    cluster = build_snapshot(state(), Profile()).of(rs.CLUSTER)["ocr"]
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert cluster.health_checks[0].grpc_health_check.service_name == "ocrmesh.ocr.v1.OcrService"
    assert cluster.outlier_detection.consecutive_gateway_failure.value == 2
    assert cluster.circuit_breakers.thresholds[0].retry_budget.min_retry_concurrency.value == 16


def test_endpoints_weights_zones_and_host_names() -> None:
    snap = build_snapshot(
        state(
            Endpoint("o1", "127.0.0.1", 50051, zone="a"),
            Endpoint("o2", "127.0.0.2", 50052, zone="b", weight=0),
            Endpoint("o3", "ocr.internal", 50053),
        ),
        Profile(),
    )
    cla = snap.of(rs.ENDPOINT)["ocr"]
    by_zone = {loc.locality.zone: loc for loc in cla.endpoints}
    assert set(by_zone) == {"a", "b"}
    assert all(loc.load_balancing_weight.value > 0 for loc in cla.endpoints)
    drained = by_zone["b"].lb_endpoints[0]
    assert drained.health_status == health_check_pb2.DRAINING
    assert any("ocr.internal" in note for note in snap.notes)


def test_proxyless_group_has_api_listeners_and_round_robin() -> None:
    snap = build_snapshot(state(Endpoint("o1", "127.0.0.1", 50051)), PROXYLESS)
    listener = snap.of(rs.LISTENER)["ocr"]
    assert listener.HasField("api_listener")
    assert snap.of(rs.CLUSTER)["ocr"].lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert snap.of(rs.ROUTE)["ocr-proxyless"].virtual_hosts[0].routes[0].route.cluster == "ocr"
    assert snap.problems() == []


def test_inconsistent_snapshot_is_refused() -> None:
    snap = build_snapshot(state(), Profile())
    broken = snap.with_resources(rs.CLUSTER, {"auth": snap.of(rs.CLUSTER)["auth"]})
    problems = broken.problems()
    assert any("unknown 'ocr'" in p for p in problems)
    assert any("ClusterLoadAssignment 'ocr' belongs to no cluster" in p for p in problems)
    with pytest.raises(InconsistentSnapshot):
        broken.check()
    no_routes = snap.with_resources(rs.ROUTE, {})
    assert any(ROUTES_NAME in p for p in no_routes.problems())
