"""Bootstraps: Envoy's validates with the real binary, node metadata round-trips, gRPC's is well formed."""

from __future__ import annotations

from pathlib import Path

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from gateway.bootstraps import envoy_bootstrap, grpc_bootstrap, split_hostport
from gateway.profile import PROXYLESS, Profile, from_node
from tests.envoy_validation import assert_envoy_accepts


def test_envoy_bootstrap_is_valid_for_envoy_and_admin_stays_on_loopback(tmp_path: Path) -> None:
    profile = Profile(host="0.0.0.0", port=8443, rate_limit_rps=50)
    doc = envoy_bootstrap("gw-1", "127.0.0.1:18000", 0, profile, max_heap_bytes=300 << 20)
    assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    heap = doc["overload_manager"]["resource_monitors"][0]["typed_config"]
    assert heap["max_heap_size_bytes"] == str(300 << 20)
    actions = {a["name"]: a["triggers"][0]["threshold"]["value"] for a in doc["overload_manager"]["actions"]}
    assert actions == {
        "envoy.overload_actions.shrink_heap": 0.90,
        "envoy.overload_actions.stop_accepting_requests": 0.95,
    }
    assert_envoy_accepts(doc, tmp_path)


def test_node_metadata_round_trips_to_the_same_profile() -> None:
    profile = Profile(host="0.0.0.0", port=8443, tls_cert="/c.pem", tls_key="/k.pem", rate_limit_rps=50)
    doc = envoy_bootstrap("gw-1", "xds.internal:18000", 0, profile)
    node = json_format.ParseDict(doc["node"], base_pb2.Node())
    assert from_node(node) == profile
    assert doc["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"  # a host name, not an IP
    assert from_node(base_pb2.Node(id="x", cluster="ocrmesh-proxyless")) == PROXYLESS
    assert from_node(base_pb2.Node(id="x", user_agent_name="gRPC Python")) == PROXYLESS
    assert from_node(base_pb2.Node(id="x", user_agent_name="envoy")) == Profile()


def test_grpc_bootstrap() -> None:
    doc = grpc_bootstrap("127.0.0.1:18000", "client-1")
    assert doc["xds_servers"][0]["server_uri"] == "127.0.0.1:18000"
    assert doc["xds_servers"][0]["server_features"] == ["xds_v3"]
    assert doc["node"] == {"id": "client-1", "cluster": "ocrmesh-proxyless", "locality": {"zone": ""}}
    assert split_hostport("[::1]:18000") == ("::1", 18000)
