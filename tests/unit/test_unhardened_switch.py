"""`--bench-unhardened` (the hardening benchmark's switch): off by default in the OCR server and the
gateway, and when on it turns off exactly the issue-17 pieces on the Recognize path."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from auth_svc import keys
from gateway import resources as rs
from gateway.bootstraps import envoy_bootstrap
from gateway.gateway_config import GatewayConfig
from gateway.gateway_server import profile_of
from gateway.profile import Profile, from_node
from gateway.snapshot_builder import ROUTES_NAME, Endpoint, MeshState, build_snapshot
from mesh import config as mesh_config
from mesh.jwks_source import JwksSource
from mesh.token_verify import TokenRevoked, TokenVerifier
from ocr_svc.config import OcrConfig
from ocr_svc.server import OcrInstance
from tests.envoy_validation import assert_envoy_accepts
from tests.unit.test_auth_token_verify import AUD, ISS, NOW, Clock, sign

OCR_PREFIX = "/ocrmesh.ocr.v1.OcrService/"


def _parsed(cls: type, *argv: str) -> Any:
    parser = argparse.ArgumentParser()
    mesh_config.add_arguments(parser, cls)
    return mesh_config.load(cls, parser.parse_args(list(argv)), environ={})


# -- OCR server ---------------------------------------------------------------------------


def test_ocr_is_hardened_unless_the_bench_flag_is_given() -> None:
    assert OcrConfig().bench_unhardened is False
    assert _parsed(OcrConfig).bench_unhardened is False
    assert _parsed(OcrConfig, "--bench-unhardened").bench_unhardened is True


def test_revoked_sessions_are_refused_unless_checks_are_off() -> None:
    key = keys.generate(NOW, NOW)
    token = sign(key, sid="family-1")
    verifiers = {
        on: TokenVerifier(
            keys.jwks_document([key]), issuer=ISS, audience=AUD, clock=Clock(), check_sessions=on
        )
        for on in (True, False)
    }
    assert TokenVerifier(issuer=ISS, audience=AUD).check_sessions is True
    for verifier in verifiers.values():
        verifier.update_revoked({"family-1": NOW + 900})
    with pytest.raises(TokenRevoked):
        verifiers[True].verify(token)
    assert verifiers[False].verify(token)["sid"] == "family-1"


async def test_unhardened_ocr_instance_warns_and_follows_no_revocations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ocr_svc.server")
    etcd = "127.0.0.1:9"  # nothing listens: the pollers keep retrying until closed
    hardened = OcrInstance(OcrConfig(require_auth=True, etcd=etcd, workers=1))
    assert not [r for r in caplog.records if "UNHARDENED" in r.getMessage()]
    unhardened = OcrInstance(OcrConfig(require_auth=True, etcd=etcd, workers=1, bench_unhardened=True))
    assert [r for r in caplog.records if "UNHARDENED" in r.getMessage() and r.levelno == logging.WARNING]
    assert hardened.jwks is not None and unhardened.jwks is not None
    sources: dict[str, JwksSource] = {"hardened": hardened.jwks, "unhardened": unhardened.jwks}
    for source in sources.values():
        await source.start()
    try:
        assert sources["hardened"].verifier.check_sessions is True
        assert sources["hardened"]._revocations is not None
        assert sources["unhardened"].verifier.check_sessions is False
        assert sources["unhardened"]._revocations is None
    finally:
        for source in sources.values():
            await source.close()


# -- gateway ------------------------------------------------------------------------------


def _state() -> MeshState:
    jwks = '{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"a","y":"b"}]}'
    return MeshState(
        {"ocr": (Endpoint("o1", "127.0.0.1", 50051),), "auth": (Endpoint("a1", "127.0.0.1", 50050),)},
        jwks=jwks,
    )


def test_gateway_is_hardened_unless_the_bench_flag_is_given() -> None:
    assert GatewayConfig().bench_unhardened is False
    assert profile_of(_parsed(GatewayConfig), 8080).hardened is True
    unhardened = _parsed(GatewayConfig, "--bench-unhardened")
    profile = profile_of(unhardened, 8080)
    assert profile.hardened is False and Profile().hardened is True
    node = json_format.ParseDict(
        envoy_bootstrap("gw", "127.0.0.1:18000", 0, profile)["node"], base_pb2.Node()
    )
    assert from_node(node) == profile  # an external control plane sees the same unhardened profile


def _hcm(snapshot_listener: Message) -> dict[str, Any]:
    listener = json_format.MessageToDict(snapshot_listener)
    return dict(listener["filterChains"][0]["filters"][0]["typedConfig"])


def test_unhardened_snapshot_is_the_pre_issue_17_config_on_the_recognize_path() -> None:
    built = {on: build_snapshot(_state(), Profile(hardened=on)) for on in (True, False)}
    for on, snap in built.items():
        cluster = json_format.MessageToDict(snap.of(rs.CLUSTER)["ocr"])
        assert ("connectionKeepalive" in json.dumps(cluster)) is on
        hcm = _hcm(snap.of(rs.LISTENER)["ocrmesh-gateway"])
        assert bool(hcm.get("useRemoteAddress")) is on
        jwt = next(f for f in hcm["httpFilters"] if f["name"] == "envoy.filters.http.jwt_authn")
        assert ("fromHeaders" in jwt["typedConfig"]["providers"]["ocrmesh"]) is on
        log_format = json.dumps(hcm["accessLog"])
        assert ("%PATH(NQ)%" in log_format) is on and ("%REQ(:PATH)%" in log_format) is not on
        routes = snap.of(rs.ROUTE)[ROUTES_NAME].virtual_hosts[0].routes
        kept = {r.match.prefix: r.request_body_buffer_limit.value for r in routes}
        assert kept[OCR_PREFIX] == Profile().max_request_bytes
        assert (len(set(kept.values())) == 1) is not on  # unhardened: the upload limit on every route


def test_unhardened_bootstrap_has_no_overload_manager_and_envoy_accepts_it(tmp_path: Path) -> None:
    assert "overload_manager" in envoy_bootstrap("gw", "127.0.0.1:18000", 0, Profile())
    doc = envoy_bootstrap("gw", "127.0.0.1:18000", 0, Profile(hardened=False), overload=False)
    assert "overload_manager" not in doc
    assert_envoy_accepts(doc, tmp_path)
